"""The run guard (docs/operations.md §4): the Dagster side of tenant_ops.

`enter()` is the first action of every step of every tenant run or job except `resume_tenant`:
1. the tenant is not suspended (the guard also suspends a tenant whose counter reached the threshold, as a
   backstop for the run-failure sensor), else the suspension message;
2. the tenant lock is free, held by this run, or held by a run that is provably dead (taken over): one its
   Dagster instance reports as finished, or one whose heartbeat is older than the takeover time. Held by a
   live run → `Pipeline is already running for tenant <t>`;
3. orphaned `running` audit rows are closed, and this run's audit row exists.
The step's tenant is the config the code location loaded (one snapshot per run); `stops_step` turns the
refusals of tenant_ops into the step's `dg.Failure`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import dagster as dg

from chargeback_dagster import tenant_ops
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.defs.tags import MAX_RUNTIME_TAG, TENANT_TAG, TRIGGER_TAG
from chargeback_dagster.ecosystems.base import GatherError
from chargeback_dagster.store import TenantStore

RUN_MONITORING_GRACE_SECONDS = 300
IN_PROGRESS = frozenset(
    {
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    }
)


# --- run facts -------------------------------------------------------------------------------------
def run_lookup(instance: dg.DagsterInstance) -> tenant_ops.RunLookup:
    """A run as `instance` reports it (None when the instance does not know it)."""

    def facts(run_id: str) -> tenant_ops.RunFacts | None:
        run = instance.get_run_by_id(run_id)
        if run is None:
            return None
        if run.status in IN_PROGRESS:
            return tenant_ops.RunFacts(in_progress=True)
        record = instance.get_run_record_by_id(run_id)
        ended = datetime.fromtimestamp(record.end_time, UTC) if record and record.end_time else None
        return tenant_ops.RunFacts(False, run.status == dg.DagsterRunStatus.SUCCESS, ended)

    return facts


def run_tenant(run: dg.DagsterRun) -> str | None:
    """A run's tenant: its `chargeback/tenant` tag, else the first component of its selected asset keys."""
    tenant = run.tags.get(TENANT_TAG)
    if tenant:
        return tenant
    keys = sorted(run.asset_selection or [], key=lambda k: k.to_user_string())
    return keys[0].path[0] if keys else None


def run_trigger(tags: dict[str, str]) -> str:
    return "refresh" if tags.get(TRIGGER_TAG) == "refresh" else "manual"


def run_start(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    if record is not None and record.start_time:
        return float(record.start_time)
    return tenant_ops.clock()


def max_runtime_tags(tenant: TenantConfig) -> dict[str, str]:
    """`dagster/max_runtime = T + 300` when the tenant has a timeout T > 0 (run monitoring's hard stop)."""
    seconds = tenant.tenant_execution_timeout_seconds
    return {MAX_RUNTIME_TAG: str(seconds + RUN_MONITORING_GRACE_SECONDS)} if seconds > 0 else {}


# --- the guard -------------------------------------------------------------------------------------
@dataclass
class Guarded:
    deadline: tenant_ops.Deadline
    trigger: str


def enter(
    context: dg.OpExecutionContext,
    tenant: TenantConfig,
    store: TenantStore,
    stage: str,
    dates: list[date] | None = None,
) -> Guarded:
    """Run the guard for a step of run `context.run_id`; raises tenant_ops.StopStep when it must not go on."""
    instance, run_id = context.instance, context.run_id
    lookup = run_lookup(instance)
    tenant_ops.check_not_suspended(store, tenant.gather_failure_threshold)
    dead_holder = tenant_ops.take_lock(store, run_id, lookup)
    tenant_ops.close_orphans(store, run_id, lookup, dead_holder)
    trigger = run_trigger(dict(context.run.tags))
    started = run_start(instance, run_id)
    tenant_ops.audit_run(
        store,
        run_id,
        trigger=trigger,
        started_at=datetime.fromtimestamp(started, UTC),
        range_start=min(dates) if dates else None,
        range_end=max(dates) if dates else None,
        stage=stage,
    )
    deadline = tenant_ops.Deadline(tenant.tenant_execution_timeout_seconds, started)
    deadline.check()
    return Guarded(deadline, trigger)


def stops_step(fn: Callable) -> Callable:
    """Fail the step with an expected error — a tenant_ops refusal (suspended, busy, timed out, …) or a
    gather failure — as a `dg.Failure` whose description is the error's one line. Raised `from None`: the
    run's event log shows the description and metadata, not the traceback of an anticipated error."""

    def failure(exc: tenant_ops.StopStep | GatherError) -> dg.Failure:
        metadata = {"error_type": type(exc).__name__}
        if isinstance(exc, tenant_ops.StopStep):
            metadata.update(exc.metadata)
        return dg.Failure(" ".join(str(exc).split()), metadata=metadata)

    expected = (tenant_ops.StopStep, GatherError)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except expected as exc:
                raise failure(exc) from None

    else:

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except expected as exc:
                raise failure(exc) from None

    # Dagster inspects a step function's signature ≈ 18 times while building its op (context, config,
    # resource and input parameters); computed here once, it is not re-derived through `__wrapped__` each
    # time (≈ 0.3 s of the code-location load at 500 tenants).
    wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return wrapper
