"""What every output format shares: the run's result it writes, the interface it implements, its error."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from chargeback_dagster.config import EmitterConfig, TenantConfig
    from chargeback_dagster.store import TenantStore

# One chargeback row of a date: (timestamp, the store's CSV_DIMENSION_COLUMNS values, Σ amount_units), summed
# over the columns the outputs do not show (docs/outputs.md §1, "Rows"); ecosystem and tenant_id are the
# tenant's.
Group = tuple[datetime, tuple[str, ...], int]


@dataclass(frozen=True)
class ChargebackResult:
    """What a `chargeback` run computed: the dates it calculated and committed, and how to read their rows.

    The rows stay in the tenant store until an output asks for a date range: a 200-day run has ~1.8 M of
    them, so an output holds one file's rows at a time, never the run's."""

    tenant: TenantConfig  # the run's config snapshot
    dates: tuple[date, ...]
    # The groups of the dates start ≤ d < end, ordered by timestamp then fields (store.chargeback.csv_groups).
    read_groups: Callable[[date, date], list[Group]]
    # The tenant store, for outputs that show more than the chargeback rows (billing lines, inventory).
    store: TenantStore | None = None


class OutputWriteError(Exception):
    """An output could not be written; the message is one line naming the file."""


class Output(ABC):
    """One emitter type. Built once per result, so state (e.g. rendered text) is shared by all emitters of
    that type; `write` is called for each of the tenant's emitters of the type, in config order."""

    default_template: ClassVar[str]  # `params.filename_template` when the config gives none
    extra_params: ClassVar[frozenset[str]] = frozenset()  # params beyond output_dir / filename_template

    def __init__(self, result: ChargebackResult) -> None:
        self.result = result

    @abstractmethod
    def write(self, emitter: EmitterConfig) -> dict[str, int]:
        """Write `emitter`'s files for the result's dates; path -> rows written. Raises OutputWriteError."""

    def path_for(self, emitter: EmitterConfig, file_date: date) -> Path:
        return emitter_path(self.result.tenant, emitter, file_date)


def emitter_path(tenant: TenantConfig, emitter: EmitterConfig, file_date: date) -> Path:
    """`<output_dir>/<filename_template>` for the file of `file_date` (docs/outputs.md §1)."""
    name = emitter.params.filename_template.format(
        tenant_id=tenant.tenant_id, tenant_name=tenant.name, date=file_date.isoformat()
    )
    return emitter.params.output_dir / name
