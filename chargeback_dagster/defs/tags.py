"""The run tags the code location sets and reads (docs/operations.md §3, §4, §6)."""

TENANT_TAG = "chargeback/tenant"
PIPELINE_TAG = "chargeback/pipeline"
TRIGGER_TAG = "chargeback/trigger"
REFETCH_METRICS_TAG = "chargeback/refetch_metrics"
MAX_RUNTIME_TAG = "dagster/max_runtime"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
