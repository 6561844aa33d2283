#!/usr/bin/env bash
# One command for the demo: system packages, the Python package, then `chargeback-dagster demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python -m pip install -q -e '.[dev,kafka]'
exec chargeback-dagster demo --workdir .demo "$@"
