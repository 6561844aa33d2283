"""CSV files for finance (docs/operations.md §10): exact amounts, stable order, atomic rewrites."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from chargeback_dagster.money import format_units

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
# A spreadsheet executes a cell that starts with one of these; a leading quote keeps it text.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class CsvWriteError(Exception):
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
    """`fields` as one CSV line fragment (quoted as csv.writer quotes them), without a line ending."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="", quoting=csv.QUOTE_MINIMAL).writerow(fields)
    return buffer.getvalue()


# One CSV row before formatting: (timestamp, the CSV_DIMENSION_COLUMNS of the store, amount_units); the file's
# ecosystem and tenant_id are the same on every row.
Group = tuple[datetime, tuple[str, ...], int]


class CsvLines:
    """Renders groups as CSV lines, the same text as csv.writer writing `format_row` of the full row.

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

    Use one `lines` for every file of a batch so rendered parts are shared between them."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="", buffering=1 << 20) as fh:
                fh.write(_render(COLUMNS) + "\n")
                rendered = lines.render(groups)
                fh.writelines(rendered)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CsvWriteError(f"Cannot write CSV '{path}': {exc}") from exc
    return len(rendered)
