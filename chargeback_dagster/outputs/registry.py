"""Emitter types (a tenant's `plugin_settings.emitters[].type`) and the output class writing each.

Adding a format = one module with an `Output` subclass + one line here; config validation takes the allowed
types from this table."""

from __future__ import annotations

from chargeback_dagster.outputs.base import ChargebackResult, Output
from chargeback_dagster.outputs.csv import CsvOutput
from chargeback_dagster.outputs.prometheus import PrometheusOutput, write_topic_openmetrics
from chargeback_dagster.outputs.topic_csv import TopicAttributionResult, write_topic_csv

OUTPUTS: dict[str, type[Output]] = {
    "csv": CsvOutput,
    "prometheus": PrometheusOutput,
}


def write_outputs(result: ChargebackResult | TopicAttributionResult) -> dict[str, dict[str, int]]:
    """Write `result` through every emitter of its tenant, in config order.

    Returns, for every registered type, path -> rows written (empty for a type the tenant does not use).
    Topic attribution rows go through the tenant's `topic_attribution.emitters` (`csv` or `prometheus`)."""
    if isinstance(result, TopicAttributionResult):
        topic_writers = {"csv": write_topic_csv, "prometheus": write_topic_openmetrics}
        topic_files: dict[str, dict[str, int]] = {f"topic_{kind}": {} for kind in topic_writers}
        for emitter in result.tenant.plugin_settings.topic_attribution.emitters:
            topic_files[f"topic_{emitter.type}"].update(topic_writers[emitter.type](result, emitter))
        return topic_files
    written: dict[str, dict[str, int]] = {name: {} for name in OUTPUTS}
    outputs: dict[str, Output] = {}
    for emitter in result.tenant.plugin_settings.emitters:
        output = outputs.get(emitter.type)
        if output is None:
            output = outputs[emitter.type] = OUTPUTS[emitter.type](result)
        written[emitter.type].update(output.write(emitter))
    return written
