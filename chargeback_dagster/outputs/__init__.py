"""Outputs of a `chargeback` run (docs/outputs.md): one module per emitter type, listed in registry.py."""
