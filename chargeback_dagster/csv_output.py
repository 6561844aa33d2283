"""CSV files for finance (operations.md §10): exact amounts, stable order, atomic rewrites."""

from __future__ import annotations

import csv
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


class _format_rows:  # noqa: N801 - used like a generator function
    """Iterator of `format_row(row)` for `rows` (streamed, never materialised), counting rows.

    Same output as format_row; faster for well-formed rows: the timestamp text is computed once per
    distinct timestamp (a daily file has one) and the column positions are fixed."""

    def __init__(self, rows: Iterable[Sequence]) -> None:
        self.rows = iter(rows)
        self.count = 0
        self.stamps: dict[datetime, str] = {}
        self.texts: dict[str, str] = {}  # neutralised text per value: dimension values repeat a lot

    def __iter__(self) -> _format_rows:
        return self

    def __next__(self) -> list[str]:
        row = next(self.rows)
        self.count += 1
        if len(row) != len(COLUMNS) or None in row:
            return format_row(row)
        eco, tenant, ts, res, cat, typ, ident, ct, units, meth, det = row
        stamp = self.stamps.get(ts)
        if stamp is None:
            stamp = self.stamps[ts] = ts.astimezone(UTC).isoformat()
        texts = self.texts
        out = [eco, tenant, stamp, res, cat, typ, ident, ct, format_units(units), meth, det]
        for i in _TEXT_INDEXES:
            value = out[i]
            text = texts.get(value)
            if text is None:
                text = texts[value] = neutralise(str(value))
            out[i] = text
        return out


_TEXT_INDEXES = tuple(i for i in range(len(COLUMNS)) if i not in (AMOUNT_INDEX, TIMESTAMP_INDEX))


def month_rows(rows: Iterable[Sequence], month_start: date) -> list[tuple]:
    """Re-group a month's daily rows: one row per dimension, timestamp = month start, amounts summed."""
    stamp = datetime(month_start.year, month_start.month, 1, tzinfo=UTC)
    totals: dict[tuple, int] = defaultdict(int)
    for row in rows:
        key = tuple(row[:TIMESTAMP_INDEX]) + (stamp,) + tuple(row[TIMESTAMP_INDEX + 1 : AMOUNT_INDEX])
        tail = tuple(row[AMOUNT_INDEX + 1 :])
        totals[key + tail] += row[AMOUNT_INDEX]
    ordered = sorted(totals, key=lambda k: k[TIMESTAMP_INDEX:])
    return [k[:AMOUNT_INDEX] + (totals[k],) + k[AMOUNT_INDEX:] for k in ordered]


def write_csv(path: Path, rows: Iterable[Sequence]) -> int:
    """Write atomically: a temporary file in the same directory, then rename. Returns the row count."""
    count = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="", buffering=1 << 20) as fh:
                writer = csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
                writer.writerow(COLUMNS)
                formatted = _format_rows(rows)
                writer.writerows(formatted)
                count = formatted.count
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CsvWriteError(f"Cannot write CSV '{path}': {exc}") from exc
    return count
