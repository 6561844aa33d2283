"""`chargeback_csv_io_manager`: writes the CSV files of every date a `chargeback` run calculated.

The asset's output is only the list of dates it calculated; the rows themselves are read from the tenant
store, so a re-materialization rewrites byte-identical files (decision D7) and a failed date keeps its file.
"""

from datetime import date, timedelta

import dagster as dg
import pandas as pd

from chargeback_dagster import csv_output
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.defs.resources import AppConfigResource, TenantStoreResource
from chargeback_dagster.store import TenantStore


def month_start(d: date) -> date:
    return d.replace(day=1)


def next_month(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1)


def write_tenant_csvs(tenant: TenantConfig, store: TenantStore, dates: list[date]) -> dict[str, int]:
    """Rewrite each emitter's files for `dates`; returns path -> data rows written."""
    written: dict[str, int] = {}
    lines = csv_output.CsvLines(store.ecosystem, store.tenant_id)  # rendered parts shared by all files
    for emitter in tenant.plugin_settings.emitters:
        if emitter.type != "csv":
            continue
        params = emitter.params

        def path_for(file_date: date, params=params):
            name = params.filename_template.format(
                tenant_id=tenant.tenant_id, tenant_name=tenant.name, date=file_date.isoformat()
            )
            return params.output_dir / name

        if emitter.aggregation == "monthly":
            for start in sorted({month_start(d) for d in dates}):
                groups = csv_output.month_groups(store.chargeback.csv_groups(start, next_month(start)), start)
                path = path_for(start)
                written[str(path)] = csv_output.write_csv(path, groups, lines)
        else:
            for d in sorted(dates):
                path = path_for(d)
                groups = store.chargeback.csv_groups(d, d + timedelta(days=1))
                written[str(path)] = csv_output.write_csv(path, groups, lines)
    return written


class ChargebackCsvIOManager(dg.ConfigurableIOManager):
    app_config: AppConfigResource
    tenant_store: TenantStoreResource

    def handle_output(self, context: dg.OutputContext, obj: list[date]) -> None:
        tenant_name = context.asset_key.path[0]
        tenant = self.app_config.tenant(tenant_name)
        try:
            written = write_tenant_csvs(tenant, self.tenant_store.open(tenant_name), obj)
        except csv_output.CsvWriteError as exc:
            raise dg.Failure(str(exc)) from exc
        context.add_output_metadata(
            {
                "csv_files": len(written),
                "csv_rows": sum(written.values()),
                "csv_paths": "\n".join(written) or "none",
            }
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        """Downstream assets get the stored rows of the partitions they load, as a DataFrame."""
        tenant_name = context.upstream_output.asset_key.path[0]
        store = self.tenant_store.open(tenant_name)
        keys = context.asset_partition_keys
        start, end = date.fromisoformat(min(keys)), date.fromisoformat(max(keys)) + timedelta(days=1)
        frame = pd.DataFrame(store.chargeback.csv_rows(start, end), columns=list(csv_output.COLUMNS))
        return frame.rename(columns={"amount": "amount_units"})
