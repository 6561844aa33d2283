"""Development helpers: OpenMetrics test data and a throw-away local Prometheus server."""

from chargeback_dagster.devtools.local_prometheus import LocalPrometheus, LocalPrometheusError
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter

__all__ = ["LocalPrometheus", "LocalPrometheusError", "OpenMetricsWriter"]
