"""Data sources shared by the ecosystems (Prometheus)."""
