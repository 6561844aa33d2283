"""The `csv` emitter type: files for finance (docs/outputs.md §1) with exact amounts, stable order, atomic
rewrites."""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from chargeback_dagster.money import format_units
from chargeback_dagster.outputs.base import ChargebackResult, Group, Output, OutputWriteError
from chargeback_dagster.outputs.files import write_atomically

if TYPE_CHECKING:
    from chargeback_dagster.config import EmitterConfig

COLUMNS = (
    "ecosystem",
    "tenant_id",
    "timestamp",
    "resource_id",
    "product_category",
    "product_type",
    "identity_id",
    "cost_type",
    "amount",
    "allocation_method",
    "allocation_detail",
)
AMOUNT_INDEX = COLUMNS.index("amount")
TIMESTAMP_INDEX = COLUMNS.index("timestamp")
# A spreadsheet executes a cell that starts with one of these; a leading quote keeps it text. A cell that
# starts with a line break is treated like one that starts with CR or tab: an importer may drop it first.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")
# Temporary files are `.<file name>.<16 hex digits>.chargeback-tmp` beside the file they replace. One whose
# last change is older than this belongs to a write that died (a live write changes its file at least
# every 1 MiB it writes, within seconds), so the next batch writing to that directory removes it.

log = logging.getLogger(__name__)


class CsvWriteError(OutputWriteError):
    pass


def neutralise(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def format_row(row: Sequence) -> list[str]:
    """Store row (…, timestamp: datetime, …, amount_units: int, …) -> CSV fields."""
    out = []
    for index, value in enumerate(row):
        if index == AMOUNT_INDEX:
            out.append(format_units(value))
        elif index == TIMESTAMP_INDEX:
            out.append(value.astimezone(UTC).isoformat())
        else:
            out.append(neutralise("" if value is None else str(value)))
    return out


def _render(fields: Sequence[str]) -> str:
    """`fields` as one CSV line fragment, without a line ending: a field with a comma, quote, CR or LF is
    quoted (RFC 4180). csv.writer quotes only the line-break characters of its lineterminator, hence CRLF."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerow(fields)
    return buffer.getvalue()[:-2]


class CsvLines:
    """Renders groups as CSV lines: `format_row` of the full row, quoted as `_render` quotes, ending in LF.

    A line is cut around the amount: (ecosystem, tenant_id, timestamp) and the dimension fields before the
    amount, the fields after it. Each distinct part is rendered once and remembered for every file written
    with this object, and each distinct amount once per file, so a line costs three lookups and a
    concatenation."""

    def __init__(self, ecosystem: str, tenant_id: str) -> None:
        self.ecosystem = ecosystem
        self.tenant_id = tenant_id
        self.heads: dict[datetime, str] = {}
        # id(fields) -> (fields, the text before the amount, the text after it). Keyed by identity: the
        # groups of a batch share the store's long-lived tuples, and a tuple re-hashes its 7 strings at
        # every lookup. The entry holds its tuple, so no other object can take that id while it exists.
        self.parts: dict[int, tuple[tuple[str, ...], str, str]] = {}
        # Directories `write_csv` has cleared of stale temporary files with this object: once per batch, not
        # per file, as a directory can hold thousands of CSVs.
        self.swept_dirs: set[Path] = set()

    def render(self, groups: Iterable[Group]) -> list[str]:
        heads, parts, fmt = self.heads, self.parts, format_units
        # A file's amounts repeat (even splits, small shares); the memo lives for one file, bounded by it.
        amounts: dict[int, str] = {}
        out: list[str] = []
        append = out.append
        for stamp, fields, units in groups:
            head = heads.get(stamp)
            known = parts.get(id(fields))
            if head is None or known is None:
                row = format_row((self.ecosystem, self.tenant_id, stamp, *fields[:5], units, *fields[5:]))
                head = heads[stamp] = _render(row[: TIMESTAMP_INDEX + 1]) + ","
                known = parts[id(fields)] = (
                    fields,
                    _render(row[TIMESTAMP_INDEX + 1 : AMOUNT_INDEX]) + ",",
                    "," + _render(row[AMOUNT_INDEX + 1 :]) + "\n",
                )
            amount = amounts.get(units)
            if amount is None:
                amount = amounts[units] = fmt(units)
            append(f"{head}{known[1]}{amount}{known[2]}")
        return out


def month_groups(groups: Iterable[Group], month_start: date) -> list[Group]:
    """Re-group a month's daily groups: one per dimension fields, timestamp = month start, amounts summed."""
    stamp = datetime(month_start.year, month_start.month, 1, tzinfo=UTC)
    totals: dict[tuple[str, ...], int] = defaultdict(int)
    for _, fields, units in groups:
        totals[fields] += units
    return [(stamp, fields, totals[fields]) for fields in sorted(totals)]


def write_csv(path: Path, groups: Iterable[Group], lines: CsvLines) -> int:
    """Write atomically: a temporary file in the same directory, then rename. Returns the row count.

    Use one `lines` for every file of a batch so rendered parts are shared between them and each directory is
    swept of stale temporary files once."""
    return write_rendered(path, COLUMNS, lambda: lines.render(groups), lines.swept_dirs)


def write_rendered(
    path: Path, header: Sequence[str], render: Callable[[], list[str]], swept_dirs: set[Path]
) -> int:
    """Write `header` and the lines `render()` returns (each ending in LF) atomically; returns the line
    count. `swept_dirs`: directories already cleared of stale temporary files in this batch."""
    rendered: list[str] = []

    def write(fh: TextIO) -> None:
        nonlocal rendered
        fh.write(_render(header) + "\n")
        rendered = render()
        fh.writelines(rendered)

    try:
        write_atomically(path, write, swept_dirs)
    except OSError as exc:
        raise CsvWriteError(f"Cannot write CSV '{path}': {exc}") from exc
    return len(rendered)


def render_rows(rows: Iterable[Sequence[str]]) -> list[str]:
    """CSV lines (RFC 4180 quoting, LF) of fields already formatted and neutralised."""
    return [_render(row) + "\n" for row in rows]


def first_of_month(d: date) -> date:
    return d.replace(day=1)


def first_of_next_month(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1)


class CsvOutput(Output):
    """One file per calculated date, or with `aggregation: monthly` one per month holding all of the month's
    stored dates, rebuilt when any of them was calculated (docs/outputs.md §1)."""

    default_template = "{tenant_id}_{date}.csv"

    def __init__(self, result: ChargebackResult) -> None:
        super().__init__(result)
        # rendered parts shared by every file of every csv emitter of the result
        self.lines = CsvLines(result.tenant.ecosystem, result.tenant.tenant_id)

    def write(self, emitter: EmitterConfig) -> dict[str, int]:
        read = self.result.read_groups
        written: dict[str, int] = {}
        if emitter.aggregation == "monthly":
            for start in sorted({first_of_month(d) for d in self.result.dates}):
                path = self.path_for(emitter, start)
                groups = month_groups(read(start, first_of_next_month(start)), start)
                written[str(path)] = write_csv(path, groups, self.lines)
        else:
            for d in sorted(self.result.dates):
                path = self.path_for(emitter, d)
                written[str(path)] = write_csv(path, read(d, d + timedelta(days=1)), self.lines)
        return written
