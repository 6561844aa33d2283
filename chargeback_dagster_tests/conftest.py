"""Shared pytest fixtures."""

from __future__ import annotations

# --- tenant store fixtures ---
# pg_base_url (session): base PostgreSQL URL from CHARGEBACK_TEST_PG_URL; skips (fails when CI=true) if the
#   server is unreachable.
# make_pg_database (session): factory `make_pg_database() -> url` creating a fresh uniquely named database;
#   every database it created is dropped at session end.
# store_url: parametrized ["sqlite", "postgresql"]; a fresh SQLite file or PostgreSQL database per test.
import os as _os
import sys as _sys
import uuid as _uuid

import pytest as _pytest

_DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_unavailable(reason: str) -> None:
    if _os.environ.get("CI", "").lower() == "true":
        _pytest.fail(f"PostgreSQL required in CI: {reason}")
    _pytest.skip(f"PostgreSQL unavailable: {reason}")


@_pytest.fixture(scope="session")
def pg_base_url() -> str:
    import sqlalchemy as sa

    url = _os.environ.get("CHARGEBACK_TEST_PG_URL", _DEFAULT_PG_URL)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        _pg_unavailable(str(exc).splitlines()[0])
    finally:
        engine.dispose()
    return url


@_pytest.fixture(scope="session")
def make_pg_database(pg_base_url: str):
    import sqlalchemy as sa

    admin = sa.create_engine(pg_base_url, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def make() -> str:
        name = f"cbtest_{_uuid.uuid4().hex[:16]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return sa.engine.make_url(pg_base_url).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@_pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'tenant.db'}"
    return request.getfixturevalue("make_pg_database")()


# --- end tenant store fixtures ---


# --- prometheus fixtures ---
# local_prometheus_factory (session): factory `start(openmetrics_text | None) -> LocalPrometheus` returning a
#   started real Prometheus (Debian prometheus/promtool) loaded with that OpenMetrics history (None = empty);
#   every server it started is stopped at session end. Each test module loads its own data (call it from a
#   module-scoped fixture). Fails (never skips) when prometheus/promtool are missing.
@_pytest.fixture(scope="session")
def local_prometheus_factory(tmp_path_factory):
    import shutil as _prom_shutil

    from chargeback_dagster.devtools.local_prometheus import LocalPrometheus

    if not (_prom_shutil.which("prometheus") and _prom_shutil.which("promtool")):
        _pytest.fail("prometheus/promtool not installed (run scripts/install-system-deps.sh)")
    started: list[LocalPrometheus] = []

    def start(openmetrics_text: str | None) -> LocalPrometheus:
        prom = LocalPrometheus(openmetrics_text, tmp_path_factory.mktemp("prometheus"))
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()


# --- end prometheus fixtures ---


@_pytest.fixture(autouse=True)
def _close_tenant_stores():
    """The code location keeps every tenant store it opened for the life of the process; a test's stores
    are disposed after it, so a session does not hold a connection to each PostgreSQL test database."""
    yield
    resources = _sys.modules.get("chargeback_dagster.defs.resources")
    if resources is not None:
        resources.close_stores()
