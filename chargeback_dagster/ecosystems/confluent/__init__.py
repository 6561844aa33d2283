"""Confluent Cloud ecosystem (confluent-cloud.md)."""
