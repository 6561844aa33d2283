"""The code location: `chargeback_dagster.definitions:defs`, built from CHARGEBACK_CONFIG_FILE.

Every Dagster process that imports this module (code server, daemon, run workers) loads and validates the
config itself; a bad config makes the location fail to load with the validation message. What it loads is
that process's one config snapshot: a run worker loads it when its run starts, the code server on each
code-location reload.
"""

from __future__ import annotations

import os

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions, collector_paused

with collector_paused():
    defs = build_definitions(load_config(None, os.environ.get("CHARGEBACK_ENV_FILE")))
    # Every Dagster process resolves the location before using it (the result is cached on `defs`):
    # resolved here, while the collector is paused, it takes half the time.
    defs.get_repository_def()
