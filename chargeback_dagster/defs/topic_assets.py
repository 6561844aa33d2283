"""`<tenant>/topic_attribution` (docs/confluent-cloud.md §9): daily-partitioned like the tenant's other
assets, only for Confluent Cloud tenants with `topic_attribution.enabled`. Its CSV files are written by the
outputs IO manager through the tenant's `topic_attribution.emitters`."""

import dagster as dg

from chargeback_dagster import pipeline
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.assets import OUTPUTS_IO_MANAGER, TenantStep, tenant_partitions
from chargeback_dagster.defs.resources import TenantStoreResource
from chargeback_dagster.outputs.topic_csv import TopicAttributionResult


def topic_attribution_enabled(tenant: TenantConfig) -> bool:
    attribution = getattr(tenant.plugin_settings, "topic_attribution", None)
    return tenant.ecosystem == "confluent_cloud" and attribution is not None and attribution.enabled


def build_topic_assets(tenant: TenantConfig) -> list[dg.AssetsDefinition]:
    """The topic attribution asset of `tenant`, or none when attribution is off."""
    if not topic_attribution_enabled(tenant):
        return []
    t = tenant.name
    key = dg.AssetKey([t, "topic_attribution"])

    @dg.asset(
        name="topic_attribution",
        key_prefix=[t],
        group_name=t,
        partitions_def=tenant_partitions(tenant),
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"python"},
        description=f"Kafka cluster costs of tenant {t} split across topics (CSV: topic emitters)",
        deps=[dg.AssetKey([t, "billing"]), dg.AssetKey([t, "inventory"]), dg.AssetKey([t, "usage_metrics"])],
        io_manager_key=OUTPUTS_IO_MANAGER,
        check_specs=[
            dg.AssetCheckSpec("topic_attribution_reconciles", asset=key, blocking=True),
            dg.AssetCheckSpec("topic_attribution_complete", asset=key),
        ],
    )
    @guard.stops_step
    def topic_attribution(context: dg.AssetExecutionContext, tenant_store: TenantStoreResource):
        step = TenantStep(context, tenant, "topic_attribution", tenant_store)
        summary = pipeline.attribute_topics(
            step.store, step.tenant, step.dates, step.logger, check_deadline=step.check_deadline
        )
        yield dg.Output(
            TopicAttributionResult(step.tenant, tuple(summary.dates), step.store.topic_attribution.rows),
            metadata={"dates_attributed": len(summary.dates), "rows_written": summary.rows_written},
        )
        gaps = pipeline.topic_reconciliation_gaps(step.store, summary.dates)
        yield dg.AssetCheckResult(
            check_name="topic_attribution_reconciles",
            passed=not gaps,
            metadata={"dates_checked": len(summary.dates), "differences": "; ".join(gaps)[:2000] or "none"},
        )
        pending = "; ".join(f"{d}: {', '.join(c)}" for d, c in sorted(summary.pending.items()))
        yield dg.AssetCheckResult(
            check_name="topic_attribution_complete",
            passed=not summary.pending,
            metadata={"pending_clusters": pending[:2000] or "none"},
            description=f"Metrics failed below the retry limit: {pending}"[:2000] if pending else None,
        )

    return [topic_attribution]
