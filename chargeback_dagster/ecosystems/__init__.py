"""Ecosystem implementations, chosen by a tenant's `ecosystem` key."""

from __future__ import annotations

from chargeback_dagster.config import TenantConfig
from chargeback_dagster.ecosystems.base import Ecosystem


def ecosystem_for(tenant: TenantConfig) -> Ecosystem:
    # Imported here so a tenant only pays for (and needs the extras of) its own ecosystem.
    if tenant.ecosystem == "generic_metrics_only":
        from chargeback_dagster.ecosystems.generic_metrics import GenericMetricsEcosystem

        return GenericMetricsEcosystem(tenant)
    raise NotImplementedError(f"ecosystem '{tenant.ecosystem}' is not implemented yet")
