"""``SimulatedOrg``: the organisation's inventory with its metrics, costs and API listings."""

from __future__ import annotations

from chargeback_dagster.devtools.ccloud_simulator.costs import OrgCosts
from chargeback_dagster.devtools.ccloud_simulator.org_api import OrgApi
from chargeback_dagster.devtools.ccloud_simulator.services_api import ServicesApi


class SimulatedOrg(OrgCosts, OrgApi, ServicesApi):
    """Deterministic synthetic Confluent Cloud organisation built from an ``OrgSpec``.

    ``SimulatedOrg(spec)`` or ``SimulatedOrg(spec, days=5)`` / ``SimulatedOrg(days=5)`` (fields override).
    """
