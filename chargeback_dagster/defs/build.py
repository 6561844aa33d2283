"""Builds the Dagster `Definitions` of a validated config: per-tenant assets, jobs, sensors, schedules,
resources (docs/operations.md §1)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from chargeback_dagster.config import AppConfig
from chargeback_dagster.defs.assets import OUTPUTS_IO_MANAGER, build_tenant_assets, tenant_job
from chargeback_dagster.defs.io_managers import ChargebackOutputsIOManager
from chargeback_dagster.defs.maintenance import build_resume_tenant_job, build_retention
from chargeback_dagster.defs.monthly_assets import (
    build_monthly_automation_sensor,
    build_monthly_report_assets,
)
from chargeback_dagster.defs.resources import PrometheusResource, TenantStoreResource
from chargeback_dagster.defs.sensors import build_refresh_sensor, build_run_status_sensors
from chargeback_dagster.defs.topic_assets import build_topic_assets
from chargeback_dagster.logging_setup import apply_logging


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while the code location loads, its objects frozen afterwards.

    Loading creates ≈ 390,000 long-lived container objects at 500 tenants and no cyclic garbage, yet each
    collection of the older generations walks all of them: ≈ 25 % of the load. Once loaded they live as
    long as the process, so they go to the collector's permanent generation (`gc.freeze`): later
    collections — during a run's steps, the code server's snapshot and sensor ticks — skip them (the
    500-tenant snapshot: ≈ 25 % less). The collector is restored also on a config error, without a freeze.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


BACKFILL_POLICY_BETA = r"Parameter `backfill_policy` of function `asset` is currently in beta"


def build_definitions(config: AppConfig) -> dg.Definitions:
    """Everything is built over `config`, the one snapshot this process loaded: steps, sensors and schedules
    never re-read the file (a code-location reload does). Logging is configured here, once per process."""
    apply_logging(config.logging)
    assets, jobs, schedules = [], [build_resume_tenant_job(config)], []
    sensors = build_run_status_sensors(config) + build_monthly_automation_sensor(config)
    with warnings.catch_warnings():
        # Dagster 1.13 warns once per asset that `backfill_policy` is beta: 2,500 stderr lines per
        # process start at 500 tenants (every run worker too). Only that warning, only while building.
        warnings.filterwarnings("ignore", BACKFILL_POLICY_BETA, dg.BetaWarning)
        for tenant in config.tenants.values():
            assets.extend(build_tenant_assets(tenant))
            assets.extend(build_topic_assets(tenant))
            jobs.append(tenant_job(tenant))
            sensors.append(build_refresh_sensor(tenant, config.features))
            retention_job, retention_schedule = build_retention(tenant)
            jobs.append(retention_job)
            schedules.append(retention_schedule)
        assets.extend(build_monthly_report_assets(config))
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources={
            "tenant_store": TenantStoreResource(),
            "prometheus": PrometheusResource(),
            OUTPUTS_IO_MANAGER: ChargebackOutputsIOManager(),
        },
        executor=dg.in_process_executor,
    )
