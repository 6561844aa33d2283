"""Ecosystems: one package each (ecosystems/<name>/), listed once in registry.py.

base.py is the interface they implement; quantities.py and identity_sources.py are helpers shared by the
self-managed Kafka and generic ecosystems. This package imports nothing at import time, so the config layer
can read the registry without loading any ecosystem.
"""
