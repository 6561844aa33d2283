"""CSV files for finance (operations.md §10): exact amounts, stable order, atomic rewrites."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
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


class CsvLines:
    """Renders store rows as CSV lines, the same text as csv.writer writing `format_row(row)`.

    A line is cut in four parts around the timestamp and the amount: (ecosystem, tenant_id), the fields
    between timestamp and amount, the fields after the amount. Each distinct part is rendered once and
    remembered for every file written with this object, so a line costs three lookups, the amount and a
    concatenation."""

    def __init__(self) -> None:
        self.heads: dict[tuple, str] = {}
        self.middles: dict[tuple, str] = {}
        self.tails: dict[tuple, str] = {}

    def render(self, rows: Iterable[Sequence]) -> Iterator[str]:
        heads, middles, tails = self.heads, self.middles, self.tails
        for row in rows:
            if len(row) != len(COLUMNS):
                yield _render(format_row(row)) + "\n"
                continue
            head_key = tuple(row[: TIMESTAMP_INDEX + 1])
            middle_key = tuple(row[TIMESTAMP_INDEX + 1 : AMOUNT_INDEX])
            tail_key = tuple(row[AMOUNT_INDEX + 1 :])
            head, middle, tail = heads.get(head_key), middles.get(middle_key), tails.get(tail_key)
            if head is None or middle is None or tail is None:
                fields = format_row(row)
                head = heads[head_key] = _render(fields[: TIMESTAMP_INDEX + 1]) + ","
                middle = middles[middle_key] = _render(fields[TIMESTAMP_INDEX + 1 : AMOUNT_INDEX]) + ","
                tail = tails[tail_key] = "," + _render(fields[AMOUNT_INDEX + 1 :]) + "\n"
            yield head + middle + format_units(row[AMOUNT_INDEX]) + tail


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


def write_csv(path: Path, rows: Iterable[Sequence], lines: CsvLines | None = None) -> int:
    """Write atomically: a temporary file in the same directory, then rename. Returns the row count.

    Pass one `lines` to every file of a batch so rendered fields are shared between them."""
    lines = lines or CsvLines()
    count = 0

    def counted(rows: Iterable[Sequence]) -> Iterator[Sequence]:
        nonlocal count
        for row in rows:
            count += 1
            yield row

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="", buffering=1 << 20) as fh:
                fh.write(_render(COLUMNS) + "\n")
                fh.writelines(lines.render(counted(rows)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CsvWriteError(f"Cannot write CSV '{path}': {exc}") from exc
    return count
