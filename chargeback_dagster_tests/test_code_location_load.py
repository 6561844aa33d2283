"""What every process pays to load the code location (benchmarks/README.md "Fleet scale"): no BetaWarning
per asset, step signatures computed once, the cycle collector paused while loading and the loaded objects
frozen afterwards."""

from __future__ import annotations

import gc
import inspect
import warnings
from pathlib import Path

import dagster as dg
import pytest

from chargeback_dagster.config import load_config
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.build import build_definitions, collector_paused
from chargeback_dagster_tests.test_operations import tenant_config, write_config


def test_building_warns_nothing_about_backfill_policy(tmp_path: Path) -> None:
    """Dagster 1.13 warns that `backfill_policy` is beta once per asset: 5 per tenant (4 daily assets and the
    monthly report) on every process start (2,500 lines at 500 tenants). Building shows none, and leaves the
    warning filters as they were."""
    tenants = {
        t: tenant_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / t}.db", name=t) for t in ("a", "b")
    }
    config = load_config(write_config(tmp_path / "config.yaml", tenants))
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = build_definitions(config)
        warnings.warn("still shown", dg.BetaWarning, stacklevel=1)  # the silencing ended with the build
    assert len(defs.get_repository_def().assets_defs_by_key) == 10  # 4 daily + 1 monthly per tenant
    assert [str(w.message) for w in caught if issubclass(w.category, dg.BetaWarning)] == ["still shown"]
    assert warnings.filters == filters


def test_a_step_function_carries_its_signature() -> None:
    """Dagster reads a step function's parameters ≈ 18 times while building its op: `stops_step` gives the
    wrapper the step's own signature so it is not re-derived through `__wrapped__` each time."""

    def step(context: dg.AssetExecutionContext, tenant_store: int) -> dg.MaterializeResult:
        raise AssertionError("not called")

    wrapped = guard.stops_step(step)
    assert wrapped.__signature__ == inspect.signature(step)
    assert list(inspect.signature(wrapped).parameters) == ["context", "tenant_store"]


def test_collector_paused_while_loading_and_the_loaded_objects_frozen() -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with collector_paused():
            assert not gc.isenabled()
            loaded = [{"tenant": i} for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(loaded)
    finally:
        gc.unfreeze()


def test_collector_restored_without_freezing_after_a_failed_load() -> None:
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("bad config")
    assert gc.isenabled() and gc.get_freeze_count() == frozen
