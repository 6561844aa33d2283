#!/usr/bin/env bash
# Debian system packages the project needs; each is installed only when missing (no network otherwise).
#   prometheus + promtool  (real Prometheus for tests, demo and benchmarks)
#   docker-compose         (docker-compose.yml)
#   --with-postgres        also install PostgreSQL when no server is installed (used by .ci/run)
#   --with-browser         also Chromium + ChromeDriver (the UI screenshot test and `chargeback-dagster
#                          ui-screenshot`; used by .ci/run)
# Usage: scripts/install-system-deps.sh [--with-postgres] [--with-browser]
set -euo pipefail

with_postgres=0
with_browser=0
for arg in "$@"; do
  case "$arg" in
    --with-postgres) with_postgres=1 ;;
    --with-browser) with_browser=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-system-deps: not root and no sudo; install the packages listed below yourself" >&2
  fi
fi

missing=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
if [ "$with_postgres" = 1 ] && ! { [ -d /etc/postgresql ] && [ -n "$(ls -A /etc/postgresql 2>/dev/null)" ]; }; then
  missing+=(postgresql)
fi
if [ "$with_browser" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-system-deps: nothing to install"
  exit 0
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
