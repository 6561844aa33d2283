"""Generic metrics ecosystem (docs/generic-metrics.md)."""
