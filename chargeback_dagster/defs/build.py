"""Builds the Dagster `Definitions` of a validated config: per-tenant assets, jobs, sensors, schedules,
resources (docs/operations.md §1)."""

from __future__ import annotations

import dagster as dg

from chargeback_dagster.config import AppConfig
from chargeback_dagster.defs.assets import OUTPUTS_IO_MANAGER, build_tenant_assets, tenant_job
from chargeback_dagster.defs.io_managers import ChargebackOutputsIOManager
from chargeback_dagster.defs.maintenance import build_retention, resume_tenant_job
from chargeback_dagster.defs.resources import AppConfigResource, PrometheusResource, TenantStoreResource
from chargeback_dagster.defs.sensors import (
    build_refresh_sensor,
    tenant_run_failure_sensor,
    tenant_run_success_sensor,
)
from chargeback_dagster.defs.topic_assets import build_topic_assets
from chargeback_dagster.logging_setup import apply_logging


def build_definitions(config: AppConfig, env_file: str | None = None) -> dg.Definitions:
    apply_logging(config.logging)
    app_config = AppConfigResource(config_file=str(config.config_path), env_file=env_file)
    tenant_store = TenantStoreResource(app_config=app_config)
    assets, jobs, schedules = [], [resume_tenant_job], []
    sensors = [tenant_run_failure_sensor, tenant_run_success_sensor]
    for tenant in config.tenants.values():
        assets.extend(build_tenant_assets(tenant))
        assets.extend(build_topic_assets(tenant))
        jobs.append(tenant_job(tenant))
        sensors.append(build_refresh_sensor(tenant, config.features))
        retention_job, retention_schedule = build_retention(tenant)
        jobs.append(retention_job)
        schedules.append(retention_schedule)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources={
            "app_config": app_config,
            "tenant_store": tenant_store,
            "prometheus": PrometheusResource(app_config=app_config),
            OUTPUTS_IO_MANAGER: ChargebackOutputsIOManager(),
        },
        executor=dg.in_process_executor,
    )
