"""A local Confluent Cloud API simulator (tests, demos, ``chargeback-dagster simulate``).

``SimulatedOrg(OrgSpec(...))`` builds a deterministic synthetic organisation (same spec and seed → same
ids, inventory, cost lines and metrics). ``CCloudSimulator(org)`` serves it over HTTP with the published
response shapes, Basic auth, pagination with opaque page tokens and runtime-configurable fault injection;
``org.openmetrics()`` renders matching Prometheus history (OpenMetrics text for promtool).

Where things live: model.py (``OrgSpec`` and the generated inventory), metrics.py (Prometheus samples),
costs.py (Costs API lines and window), org_api.py (environments, clusters, IAM), services_api.py (connect,
Schema Registry, ksqlDB, Flink), org.py (``SimulatedOrg``), server.py (HTTP, auth, routing), faults.py,
pagination.py, cli.py (``chargeback-dagster simulate``), common.py (ids, timestamps, exact JSON).
"""

from chargeback_dagster.devtools.ccloud_simulator.cli import build_parser, main
from chargeback_dagster.devtools.ccloud_simulator.faults import Faults
from chargeback_dagster.devtools.ccloud_simulator.model import ALL_PRODUCTS, OrgSpec
from chargeback_dagster.devtools.ccloud_simulator.org import SimulatedOrg
from chargeback_dagster.devtools.ccloud_simulator.server import DEFAULT_KEY, DEFAULT_SECRET, CCloudSimulator

__all__ = [
    "ALL_PRODUCTS",
    "DEFAULT_KEY",
    "DEFAULT_SECRET",
    "CCloudSimulator",
    "Faults",
    "OrgSpec",
    "SimulatedOrg",
    "build_parser",
    "main",
]
