"""``python -m chargeback_dagster.devtools.ccloud_simulator`` = ``chargeback-dagster simulate``."""

from chargeback_dagster.devtools.ccloud_simulator.cli import main

raise SystemExit(main())
