"""A local Confluent Cloud API simulator (tests, demos, ``chargeback-dagster simulate``)."""

from chargeback_dagster.devtools.ccloud_simulator.model import (
    ALL_PRODUCTS,
    DEFAULT_KEY,
    DEFAULT_SECRET,
    CCloudSimulator,
    Faults,
    OrgSpec,
    SimulatedOrg,
    build_parser,
    main,
)

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
