"""The code location's cache of open tenant stores (defs/resources.py): each store is opened — migrated,
UNALLOCATED upserted — once per process, whatever the number of tenants, and can be disposed of."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from chargeback_dagster.config import load_config
from chargeback_dagster.defs import resources
from chargeback_dagster.defs.resources import TenantStoreResource, close_stores
from chargeback_dagster.store import TenantStore
from chargeback_dagster.store.database import alembic_config
from chargeback_dagster_tests.test_operations import tenant_config, write_config


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenant of every TenantStore.open (a real open: engine, migrations, UNALLOCATED upsert)."""
    calls: list[str] = []
    real_open = TenantStore.open

    def counting_open(url: str, **kwargs) -> TenantStore:
        calls.append(kwargs["tenant_name"])
        return real_open(url, **kwargs)

    monkeypatch.setattr(TenantStore, "open", staticmethod(counting_open))
    return calls


def fleet(tmp_path: Path, n: int):
    tenants = {
        f"t{i:03d}": tenant_config(
            "http://127.0.0.1:9", f"sqlite:///{tmp_path / f't{i:03d}.db'}", name=f"t{i:03d}"
        )
        for i in range(n)
    }
    return list(load_config(write_config(tmp_path / "config.yaml", tenants)).tenants.values())


def test_more_tenants_than_the_old_cache_each_open_once(tmp_path: Path, opens: list[str]) -> None:
    """70 tenants ticked three times in turn: 70 opens (a cache of 64 re-opened every store each round:
    210), and each tenant gets back the very store it opened."""
    tenants = fleet(tmp_path, 70)
    resource = TenantStoreResource()
    first = [resource.open(t) for t in tenants]
    for _ in range(2):
        assert [resource.open(t) for t in tenants] == first
        assert all(a is b for a, b in zip(first, [resource.open(t) for t in tenants], strict=True))
    assert len(opens) == 70
    assert sorted(opens) == [f"t{i:03d}" for i in range(70)]


def test_concurrent_first_use_opens_once(tmp_path: Path, opens: list[str]) -> None:
    """Sensors evaluated in threads may reach the same new store at once: one open (one migration)."""
    (tenant,) = fleet(tmp_path, 1)
    start = threading.Barrier(8)
    got: list[TenantStore] = []

    def tick() -> None:
        start.wait()
        got.append(TenantStoreResource().open(tenant))

    threads = [threading.Thread(target=tick) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opens == ["t000"]
    assert len(got) == 8 and all(store is got[0] for store in got)


def test_close_stores_disposes_and_the_next_use_reopens(tmp_path: Path, opens: list[str]) -> None:
    tenants = fleet(tmp_path, 2)
    before = [TenantStoreResource().open(t) for t in tenants]
    close_stores()
    assert resources._stores == {}
    after = [TenantStoreResource().open(t) for t in tenants]
    assert opens == ["t000", "t001", "t000", "t001"]
    assert all(a is not b for a, b in zip(before, after, strict=True))


# Opens 12 new tenant stores at once, one thread each, as the code server does when the daemon ticks the
# tenants' sensors in threads; prints the failures and every store's schema revision as JSON.
_OPEN_IN_THREADS = """
import json, sys, threading
from chargeback_dagster.store import TenantStore
from chargeback_dagster.store.tables import VERSION_TABLE
errors, revisions = [], []
def open_one(i):
    try:
        store = TenantStore.open(f"sqlite:///{sys.argv[1]}/t{i}.db", tenant_name=f"t{i}",
                                 ecosystem="generic_metrics", tenant_id=f"t{i}")
        with store.db.engine.connect() as conn:
            revisions.append(conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar())
        store.dispose()
    except Exception as e:
        errors.append(type(e).__name__)
threads = [threading.Thread(target=open_one, args=(i,)) for i in range(12)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"errors": sorted(errors), "revisions": revisions}))
"""


def test_new_stores_opened_in_parallel_threads_all_migrate(tmp_path: Path) -> None:
    """Alembic's migration state is module-level: concurrent `upgrade head`s in one process crossed
    connections (`table resources already exists`, `KeyError: 'script'`) or crashed the process with a
    segmentation fault, which took the code server down when the daemon ticked sensors in threads. Each
    round opens 12 new stores at once in a fresh process: all reach the head revision."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    for round_ in range(3):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", _OPEN_IN_THREADS, str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout) == {"errors": [], "revisions": [head] * 12}
