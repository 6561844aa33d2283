"""Ecosystem implementations, chosen by a tenant's `ecosystem` key."""

from __future__ import annotations

from chargeback_dagster.config import TenantConfig
from chargeback_dagster.ecosystems.base import Ecosystem


def ecosystem_for(tenant: TenantConfig) -> Ecosystem:
    # Imported here so a tenant only pays for (and needs the extras of) its own ecosystem.
    if tenant.ecosystem == "generic_metrics_only":
        from chargeback_dagster.ecosystems.generic_metrics.ecosystem import GenericMetricsEcosystem

        return GenericMetricsEcosystem(tenant)
    if tenant.ecosystem == "confluent_cloud":
        from chargeback_dagster.ecosystems.confluent.ecosystem import ConfluentCloudEcosystem

        return ConfluentCloudEcosystem(tenant)
    if tenant.ecosystem == "self_managed_kafka":
        from chargeback_dagster.ecosystems.self_managed_kafka.ecosystem import SelfManagedKafkaEcosystem

        return SelfManagedKafkaEcosystem(tenant)
    raise NotImplementedError(f"ecosystem '{tenant.ecosystem}' is not implemented yet")
