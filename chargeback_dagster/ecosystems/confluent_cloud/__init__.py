"""Confluent Cloud ecosystem (docs/confluent-cloud.md)."""
