"""The code location: `chargeback_dagster.definitions:defs`, built from CHARGEBACK_CONFIG_FILE.

Every Dagster process that imports this module (code server, daemon, run workers) loads and validates the
config itself; a bad config makes the location fail to load with the validation message.
"""

from __future__ import annotations

import os

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions

_env_file = os.environ.get("CHARGEBACK_ENV_FILE")
defs = build_definitions(load_config(None, _env_file), _env_file)
