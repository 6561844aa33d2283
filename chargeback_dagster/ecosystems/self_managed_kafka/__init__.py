"""Self-managed Kafka ecosystem (docs/self-managed-kafka.md)."""
