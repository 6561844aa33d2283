"""`chargeback_outputs_io_manager`: writes what a `chargeback` run computed through the tenant's emitters.

The asset returns a `ChargebackResult` (the dates it calculated and committed, and a reader of their rows in
the tenant store), so a re-materialization rewrites byte-identical files (decision D7) and a failed date
keeps its files. Each emitter type is an output class of outputs/registry.py. A `topic_attribution` run
returns a `TopicAttributionResult`, written through the tenant's topic attribution emitters.
"""

import dagster as dg

from chargeback_dagster.outputs.base import ChargebackResult, OutputWriteError
from chargeback_dagster.outputs.registry import write_outputs
from chargeback_dagster.outputs.topic_csv import TopicAttributionResult


class ChargebackOutputsIOManager(dg.ConfigurableIOManager):
    def handle_output(
        self, context: dg.OutputContext, obj: ChargebackResult | TopicAttributionResult
    ) -> None:
        try:
            written = write_outputs(obj)
        except OutputWriteError as exc:  # expected: one line naming the file, no traceback
            raise dg.Failure(str(exc), metadata={"error_type": type(exc).__name__}) from None
        metadata: dict[str, int | str] = {}
        for kind, files in written.items():  # e.g. csv_files, csv_rows, csv_paths
            metadata[f"{kind}_files"] = len(files)
            metadata[f"{kind}_rows"] = sum(files.values())
            metadata[f"{kind}_paths"] = "\n".join(files) or "none"
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> ChargebackResult:
        # Required by Dagster's interface; no asset takes `chargeback` as an input.
        raise NotImplementedError("The chargeback asset is written to files and is not loaded as an input")
