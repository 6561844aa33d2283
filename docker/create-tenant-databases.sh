#!/bin/sh
# Creates each PostgreSQL database named in CHARGEBACK_TENANT_DATABASES (comma- or space-separated) that
# does not exist yet; existing ones are left alone, so it runs on every `docker compose up`. Connection from
# the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (docker-compose.yml sets them).
set -eu

names=$(printf '%s' "${CHARGEBACK_TENANT_DATABASES:-}" | tr ',' ' ')
# every name first, so a bad one creates nothing; plain names need no quoting in SQL or in the URL
for name in $names; do
    case "$name" in
        *[!a-z0-9_]* | [0-9]*)
            echo "tenant database name '$name': use lower-case letters, digits and _ (not first)" >&2
            exit 1
            ;;
    esac
done
for name in $names; do
    if [ "$(psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" = 1 ]; then
        echo "tenant database $name: exists"
    else
        createdb "$name"
        echo "tenant database $name: created"
    fi
done
