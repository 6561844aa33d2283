#!/usr/bin/env bash
# One command for the demo: system packages, the Python package, then `chargeback-dagster demo`.
# `scripts/demo.sh --ui` then keeps Prometheus and the simulator up and serves the Dagster UI on the demo's
# runs (http://127.0.0.1:3000) until Ctrl-C; other options go to `chargeback-dagster demo` as well.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python -m pip install -q -e '.[dev,kafka]'
exec chargeback-dagster demo --workdir .demo "$@"
