"""Daily-partitioned tenant assets (docs/operations.md §1): billing → inventory → usage_metrics → chargeback.

Each asset is a thin wrapper: it works out the run's dates, opens the tenant's store and ecosystem, and
calls the matching step of pipeline.py. All of a tenant's assets use a single-run backfill policy, so a
date range is one run that walks the dates in ascending order.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from chargeback_dagster import pipeline, tenant_ops
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.resources import PrometheusResource, TenantStoreResource
from chargeback_dagster.defs.tags import PIPELINE_TAG, REFETCH_METRICS_TAG, TENANT_TAG
from chargeback_dagster.domain import now_utc
from chargeback_dagster.ecosystems.base import GatherContext, GatherError
from chargeback_dagster.ecosystems.registry import ecosystem_for
from chargeback_dagster.logging_setup import step_logger
from chargeback_dagster.money_metadata import MoneyMetadata
from chargeback_dagster.outputs.base import ChargebackResult
from chargeback_dagster.outputs.registry import write_outputs
from chargeback_dagster.store.tenant_store import TenantStore

OUTPUTS_IO_MANAGER = "chargeback_outputs_io_manager"


def run_dates(context: dg.AssetExecutionContext) -> list[date]:
    """The partition dates this run covers, ascending."""
    return [date.fromisoformat(key) for key in context.partition_keys]


def tenant_partitions(tenant: TenantConfig) -> dg.DailyPartitionsDefinition:
    # The newest partition is yesterday (UTC): a day is only billed once it is over.
    return dg.DailyPartitionsDefinition(start_date=tenant.partitions_start_date.isoformat(), timezone="UTC")


class TenantStep:
    """What every step of a tenant run starts with: the guard (docs/operations.md §4), store, ecosystem,
    dates, deadline (§6) and gather-failure accounting (§7). `tenant` is the config the code location
    loaded: the run's one snapshot."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        tenant: TenantConfig,
        stage: str,
        tenant_store: TenantStoreResource,
        prometheus: PrometheusResource | None = None,
    ):
        self.context = context
        self.run_id = context.run_id
        self.tenant = tenant
        self.dates = run_dates(context)
        self.logger = step_logger(tenant.name, context.run_id, stage, self.dates)
        self.store = tenant_store.open(tenant)  # migrations + UNALLOCATED (once per process)
        guarded = guard.enter(context, tenant, self.store, stage, self.dates)
        self.deadline = guarded.deadline
        self.trigger = guarded.trigger
        self.ecosystem = ecosystem_for(tenant)
        self.now = now_utc()
        self._prometheus = prometheus
        self._client = None

    def check_deadline(self) -> None:
        self.deadline.check()
        tenant_ops.check_lock_kept(self.tenant.name, self.run_id)

    def prometheus_client(self):
        if self._client is None:
            self.check_deadline()
            # retry waits and in-flight requests respect the run's deadline
            self._client = self._prometheus.client(
                self.tenant, self.deadline.wrap_sleep(time.sleep), self.deadline.seconds_left
            )
        return self._client

    def gather_context(self) -> GatherContext:
        return GatherContext(
            tenant=self.tenant,
            logger=self.logger,
            now=self.now,
            prometheus=self.prometheus_client,
            check_deadline=self.check_deadline,
            deadline_left=self.deadline.seconds_left,
        )

    def inside_cutoff(self) -> list[date]:
        first_unsettled = datetime.now(UTC).date() - timedelta(days=self.tenant.cutoff_days)
        return [d for d in self.dates if d >= first_unsettled]

    def audit(self, **fields) -> None:
        tenant_ops.audit_progress(self.store, self.run_id, **fields)

    def gather_kinds_in_run(self) -> set[str]:
        selected = self.context.run.asset_selection or self.context.job_def.asset_layer.executable_asset_keys
        return {key.path[-1] for key in selected if key.path[0] == self.tenant.name} & set(
            tenant_ops.GATHER_KINDS
        )

    @contextmanager
    def gather(self, kind: str) -> Iterator[None]:
        """A gather (`billing` or `inventory`): logged in gather_log; a GatherError counts once per run
        towards suspension, a success resets the counter once all of the run's gathers succeeded."""
        self.check_deadline()
        log_id = self.store.state.log_gather(
            kind=kind,
            run_id=self.run_id,
            trigger=self.trigger,
            started_at=now_utc(),
            range_start=min(self.dates) if self.dates else None,
            range_end=max(self.dates) if self.dates else None,
            status="running",
        )
        try:
            yield
        except GatherError as exc:
            self.store.state.finish_gather(log_id, finished_at=now_utc(), status="failed", error=str(exc))
            if self.deadline.expired():  # a provider wait cut short by the deadline is a timeout
                raise tenant_ops.ExecutionTimeout(self.deadline.message) from exc
            tenant_ops.record_failure(self.store, self.run_id, f"{kind}: {exc}")
            raise
        except BaseException as exc:
            self.store.state.finish_gather(log_id, finished_at=now_utc(), status="failed", error=str(exc))
            raise
        self.store.state.finish_gather(log_id, finished_at=now_utc(), status="ok")
        tenant_ops.record_success(self.store, self.run_id, self.gather_kinds_in_run())

    def chargeback_result(self, dates: list[date]) -> ChargebackResult:
        return ChargebackResult(self.tenant, tuple(dates), self.store.chargeback.csv_groups, self.store)

    def write_committed_outputs(self) -> None:
        """After a timeout inside `chargeback`: write the outputs of the dates this run already committed."""
        done = [
            d
            for d in self.dates
            if (self.store.state.date_row(d) or {}).get("calculation_run_id") == self.run_id
        ]
        if done:
            write_outputs(self.chargeback_result(done))
            self.logger.warning(f"Timed out after calculating {len(done)} date(s); their files were written")


# The UI's kind badge of each ecosystem's source.
SOURCE_KINDS = {
    "confluent_cloud": "confluent",
    "self_managed_kafka": "kafka",
    "generic_metrics_only": "prometheus",
}


def store_kind(tenant: TenantConfig) -> str:
    return (
        "postgres" if tenant.storage.connection_string.get_secret_value().startswith("postgres") else "sqlite"
    )


def build_tenant_assets(tenant: TenantConfig) -> list[dg.AssetsDefinition]:
    t = tenant.name
    store = store_kind(tenant)
    common = {
        "key_prefix": [t],
        "group_name": t,
        "partitions_def": tenant_partitions(tenant),
        "backfill_policy": dg.BackfillPolicy.single_run(),
        "tags": {"tenant": t, "ecosystem": tenant.ecosystem},
    }
    source = {"kinds": {"python", SOURCE_KINDS.get(tenant.ecosystem, "python"), store}}
    billing_key = dg.AssetKey([t, "billing"])
    inventory_key = dg.AssetKey([t, "inventory"])
    metrics_key = dg.AssetKey([t, "usage_metrics"])
    chargeback_key = dg.AssetKey([t, "chargeback"])
    # Steps that call the provider's API share its concurrency pool (Confluent: `ccloud_api`, §5).
    provider_pool = ecosystem_for(tenant).api_pool

    @dg.asset(
        name="billing",
        description=f"Billing lines of tenant {t}, per UTC day",
        pool=provider_pool,
        **source,
        **common,
    )
    @guard.stops_step
    def billing(
        context: dg.AssetExecutionContext,
        tenant_store: TenantStoreResource,
        prometheus: PrometheusResource,
    ) -> dg.MaterializeResult:
        step = TenantStep(context, tenant, "gathering", tenant_store, prometheus)
        unsettled = step.inside_cutoff()
        for d in unsettled:
            step.logger.warning(
                f"Billing for {d} may still change; it will be recalculated when it enters the refresh window"
            )
        with step.gather("billing"):
            summary = pipeline.gather_billing(step.store, step.ecosystem, step.dates, step.gather_context())
        step.audit(dates_gathered=len(summary.dates_with_lines))
        return dg.MaterializeResult(
            metadata={
                "lines_stored": summary.lines_stored,
                "dates_with_lines": len(summary.dates_with_lines),
                "failed_dates": {str(d): e for d, e in summary.failed_dates.items()},
                "inside_cutoff": bool(unsettled),
            }
        )

    @dg.asset(
        name="inventory",
        description=f"Resources and identities of tenant {t}",
        pool=provider_pool,
        **source,
        **common,
    )
    @guard.stops_step
    def inventory(
        context: dg.AssetExecutionContext,
        tenant_store: TenantStoreResource,
        prometheus: PrometheusResource,
    ) -> dg.MaterializeResult:
        step = TenantStep(context, tenant, "gathering", tenant_store, prometheus)
        with step.gather("inventory"):
            summary = pipeline.gather_inventory(
                step.store,
                step.ecosystem,
                step.dates,
                step.gather_context(),
                tenant.zero_gather_deletion_threshold,
            )
        if summary.handler_errors:
            errors = "; ".join(f"Handler {s} gather failed: {e}" for s, e in summary.handler_errors.items())
            handlers = ", ".join(summary.handler_errors)
            raise dg.Failure(
                f"Inventory incomplete: {errors}",
                metadata={"error_type": "InventoryIncomplete", "failed_handlers": handlers},
            )
        return dg.MaterializeResult(
            metadata={
                "resources": summary.resources,
                "identities": summary.identities,
                "resources_marked_deleted": summary.deleted_resources,
                "identities_marked_deleted": summary.deleted_identities,
            }
        )

    @dg.asset(
        name="usage_metrics",
        description=f"Per-identity usage from Prometheus for tenant {t}",
        deps=[billing_key, inventory_key],
        check_specs=[
            dg.AssetCheckSpec(
                "all_metrics_fetched",
                asset=metrics_key,
                description="Every usage query of the run's dates was answered by Prometheus",
            )
        ],
        kinds={"python", "prometheus", store},
        **common,
    )
    @guard.stops_step
    def usage_metrics(
        context: dg.AssetExecutionContext,
        tenant_store: TenantStoreResource,
        prometheus: PrometheusResource,
    ):
        step = TenantStep(context, tenant, "fetching_metrics", tenant_store, prometheus)
        refetch = context.run.tags.get(REFETCH_METRICS_TAG, "").lower() == "true"
        summary = pipeline.fetch_usage_metrics(
            step.store,
            step.ecosystem,
            step.dates,
            step.prometheus_client,
            tenant.plugin_settings.metrics_step_seconds,
            step.now,
            refetch=refetch,
            logger=step.logger,
        )
        step.check_deadline()  # Prometheus errors never fail this step, but the deadline does
        for failure in summary.failures:
            step.logger.warning(f"Metric query failed: {failure}")
        yield dg.MaterializeResult(
            metadata={
                "queries_needed": summary.requested,
                "queries_fetched": summary.fetched,
                "queries_settled_skipped": summary.skipped_settled,
                "queries_failed": len(summary.failures),
            }
        )
        yield dg.AssetCheckResult(
            check_name="all_metrics_fetched",
            passed=not summary.failures,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"failures": "\n".join(summary.failures[:50]) or "none"},
        )

    @dg.asset(
        name="chargeback",
        description=f"Allocated chargeback rows of tenant {t}; its emitters' files written by the IO manager",
        deps=[billing_key, inventory_key, metrics_key],
        io_manager_key=OUTPUTS_IO_MANAGER,
        kinds={"python", "csv", store},
        check_specs=[
            dg.AssetCheckSpec(
                "reconciles_to_billing",
                asset=chargeback_key,
                blocking=True,
                description="Each date's allocated total equals its billed total to the unit of 0.0001",
            ),
            dg.AssetCheckSpec(
                "all_dates_calculated",
                asset=chargeback_key,
                blocking=True,
                description="Every date of the run was allocated without error",
            ),
            dg.AssetCheckSpec(
                "inputs_gathered_and_non_empty",
                asset=chargeback_key,
                description="Every date's billing and inventory were gathered and its billing has a line",
            ),
        ],
        **common,
    )
    @guard.stops_step
    def chargeback(
        context: dg.AssetExecutionContext,
        tenant_store: TenantStoreResource,
    ):
        step = TenantStep(context, tenant, "calculating", tenant_store)
        try:
            # each date's money metadata is built while its allocation is in memory
            money = MoneyMetadata(step.store, step.dates, csv_paths(tenant, step.dates))
            summary = pipeline.calculate_chargeback(
                step.store,
                step.tenant,
                step.ecosystem,
                step.dates,
                context.run_id,
                step.logger,
                check_deadline=step.check_deadline,
                on_calculated=money.add,
            )
        except tenant_ops.ExecutionTimeout:
            step.write_committed_outputs()
            raise
        step.audit(
            stage="writing_csv",
            dates_calculated=len(summary.calculated),
            rows_written=summary.rows_written,
            current_date=max(summary.calculated) if summary.calculated else None,
        )
        # Each date's own money metadata on its own partition (the Plots tab draws the daily trend).
        per_date = money.finish()
        for d, metadata in per_date.items():
            context.add_asset_metadata(metadata, partition_key=d.isoformat())
        # No range-wide counts on the output: Dagster would copy them onto every date of the range.
        yield dg.Output(step.chargeback_result(summary.calculated))
        gaps = pipeline.reconciliation_gaps(step.store, summary.calculated)
        yield dg.AssetCheckResult(
            check_name="reconciles_to_billing",
            passed=not gaps,
            metadata={
                "dates_checked": len(summary.calculated),
                "dates": reconciliation_table(per_date, gaps, summary.calculated),
                "differences": "; ".join(f"{d}: {units:+d} units of 0.0001" for d, units in gaps.items())
                or "none",
            },
            description=None
            if not gaps
            else f"Allocated total differs from billed total on {len(gaps)} date(s)",
        )
        yield inputs_check(step.store, step.dates)
        failed = "; ".join(summary.errors.values())[:2000]
        yield dg.AssetCheckResult(
            check_name="all_dates_calculated",
            passed=not summary.errors,
            metadata={"failed_dates": failed or "none"},
            description=failed or None,
        )

    return [billing, inventory, usage_metrics, chargeback]


def csv_paths(tenant: TenantConfig, dates: list[date]) -> dict[date, list[str]]:
    """The daily CSV files of each date, one per daily `csv` emitter."""
    daily = [e for e in tenant.plugin_settings.emitters if e.type == "csv" and e.aggregation != "monthly"]
    return {
        d: [
            str(
                e.params.output_dir
                / e.params.filename_template.format(
                    tenant_id=tenant.tenant_id, tenant_name=tenant.name, date=d.isoformat()
                )
            )
            for e in daily
        ]
        for d in dates
    }


def reconciliation_table(
    money: dict[date, dict], gaps: dict[date, int], dates: list[date]
) -> dg.MetadataValue:
    """The reconciliation check's per-date results (it reports once per run in a single-run backfill)."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("date", "string"),
            dg.TableColumn("billed", "string"),
            dg.TableColumn("allocated", "string"),
            dg.TableColumn("difference_units", "int"),
        ]
    )
    rows = [
        dg.TableRecord(
            {
                "date": d.isoformat(),
                "billed": money[d]["billed_total_exact"],
                "allocated": money[d]["allocated_total_exact"],
                "difference_units": gaps.get(d, 0),
            }
        )
        for d in dates
    ]
    return dg.MetadataValue.table(rows, schema=schema)


def inputs_check(store: TenantStore, dates: list[date]) -> dg.AssetCheckResult:
    """Fails for a date whose billing or inventory was never gathered, or whose billing came back without a
    line: its chargeback would be an empty file that looks like a zero-cost day. The check reports once per
    run; the per-date results are its `dates` table (Dagster 1.13 has no per-partition check result in a
    single-run backfill)."""
    billed = store.billing.billed_units(min(dates), max(dates) + timedelta(days=1)) if dates else {}
    rows, bad = [], []
    for d in dates:
        # billing_gathered_at is only set on dates that got lines, so "never gathered" and "the provider
        # returned none" look alike here: both leave the date without a billed line.
        row = store.state.date_row(d) or {}
        problem = "; ".join(
            p
            for p, missing in (
                ("no billing lines (never gathered, or the provider returned none)", d not in billed),
                ("inventory not gathered", row.get("inventory_gathered_at") is None),
            )
            if missing
        )
        if problem:
            bad.append(f"{d}: {problem}")
        rows.append(dg.TableRecord({"date": d.isoformat(), "passed": not problem, "problem": problem}))
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("date", "string"),
            dg.TableColumn("passed", "bool"),
            dg.TableColumn("problem", "string"),
        ]
    )
    return dg.AssetCheckResult(
        check_name="inputs_gathered_and_non_empty",
        passed=not bad,
        metadata={"dates": dg.MetadataValue.table(rows, schema=schema), "failed_dates": len(bad)},
        description="; ".join(bad)[:2000] or None,
    )


def tenant_job(tenant: TenantConfig):
    return dg.define_asset_job(
        name=f"{tenant.name}_pipeline",
        selection=dg.AssetSelection.groups(tenant.name),
        tags={TENANT_TAG: tenant.name, PIPELINE_TAG: "tenant", **guard.max_runtime_tags(tenant)},
        description=f"All assets and checks of tenant {tenant.name}",
    )
