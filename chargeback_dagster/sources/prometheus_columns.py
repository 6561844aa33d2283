"""Prometheus' JSON answers read into float columns (docs/generic-metrics.md §1): timestamps and values
of each series as two lists, non-finite and unparseable points skipped.

A successful matrix (the usual answer) is decoded straight into typed points that the cyclic garbage
collector does not track (msgspec structs with ``gc=False``): a 7-day matrix is ~10^5 points alive until
they are converted, and as JSON lists their allocations would trigger collections that traverse them (and
the whole heap) again and again (measured: 4x the parse time). Any other answer is parsed as JSON
(``loads``) and read point by point where needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from operator import attrgetter, lt
from typing import Any, Literal

import msgspec
import orjson


def column_shape(ts_list: list[float], start: int, end: int) -> tuple[bool, bool]:
    """``(ascending, inside)`` of a non-empty timestamps column: whether it strictly ascends and whether
    every timestamp lies in the window ``[start, end)`` (integer milliseconds)."""
    ascending = all(map(lt, ts_list, ts_list[1:]))
    first, final = (ts_list[0], ts_list[-1]) if ascending else (min(ts_list), max(ts_list))
    return ascending, start <= round(first * 1000) and round(final * 1000) < end


class Point(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """``[<unix time>, "<value>"]``, untracked by the garbage collector (``gc=False``: it holds no object
    that could form a cycle)."""

    ts: float
    value: str


class MatrixSeries(msgspec.Struct, gc=False):
    values: list[Point]
    metric: dict[str, str] = {}


class Matrix(msgspec.Struct, gc=False):
    resultType: Literal["matrix"]  # Prometheus' field name
    result: list[MatrixSeries]


class MatrixResponse(msgspec.Struct, gc=False):
    status: Literal["success"]
    data: Matrix
    warnings: list[str] = []


_DECODER = msgspec.json.Decoder(MatrixResponse)
_TS = attrgetter("ts")
_VALUE = attrgetter("value")


def decode_matrix(content: bytes) -> MatrixResponse | None:
    """A successful matrix answer of the usual shape; None for any other answer (an error, another result
    type, odd points or JSON that only Python's json reads), which the caller reads with ``loads``."""
    try:
        return _DECODER.decode(content)
    except msgspec.DecodeError:  # also ValidationError: a shape other than the one declared
        return None


def matrix_columns(
    result: list[MatrixSeries],
) -> Iterable[tuple[dict[str, str], list[float], list[float]]]:
    """``(labels, timestamps, values)`` of each series of a decoded matrix."""
    grid = Grid()
    for item in result:
        points = item.values
        if not points:
            yield item.metric, [], []
            continue
        ts_raw, values_raw = tuple(map(_TS, points)), tuple(map(_VALUE, points))
        converted = _from_columns(ts_raw, values_raw, grid)
        yield item.metric, *(converted or _parse_points(zip(ts_raw, values_raw, strict=True)))


def loads(content: bytes) -> Any:
    """The JSON body, parsed by orjson (several times faster than json on large matrices). What orjson
    rejects but json accepts (NaN/Infinity literals, UTF-16/32, lone surrogates) is parsed by json, as the
    client always did (httpx's ``Response.json()`` is ``json.loads(content)``)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def parse_point(point: Any) -> tuple[float, float] | None:
    try:
        ts, raw = point
        value = float(raw)
        ts = float(ts)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or not math.isfinite(ts):
        return None
    return ts, value


class Grid:
    """The last timestamps column columns converted for a response, reused for the next equal column: the
    series of a response mostly share one evaluation grid, so it is converted once and one list is shared
    (read only), which also lets later steps check it and cut it into days once per grid."""

    __slots__ = ("floats", "raw", "reusable")

    def __init__(self) -> None:
        self.raw: tuple[Any, ...] = ()
        self.floats: list[float] = []
        self.reusable: bool | None = None  # decided at the first match

    def match(self, raw: tuple[Any, ...]) -> list[float] | None:
        """The floats of ``raw`` when it equals the kept column. Equal numbers convert to equal floats,
        except that 0 == -0.0: a column holding a zero timestamp is not reused."""
        if raw != self.raw:
            return None
        if self.reusable is None:
            self.reusable = 0.0 not in self.floats
        return self.floats if self.reusable else None

    def keep(self, raw: tuple[Any, ...], floats: list[float]) -> None:
        self.raw, self.floats, self.reusable = raw, floats, None


def columns(raw_points: list[Any], grid: Grid | None = None) -> tuple[list[float], list[float]]:
    """Timestamps and values of a ``values`` array; non-finite and unparseable points skipped.

    Fast path: transpose the whole array at C level (unpacking into two columns accepts exactly what
    ``ts, value = point`` accepts) and convert it (_from_columns); any oddity falls back to per-point
    parsing."""
    try:
        ts_raw, values_raw = zip(*raw_points, strict=True)
    except (TypeError, ValueError):
        return _parse_points(raw_points)
    return _from_columns(ts_raw, values_raw, grid) or _parse_points(raw_points)


def _from_columns(
    ts_raw: tuple[Any, ...], values_raw: tuple[Any, ...], grid: Grid | None
) -> tuple[list[float], list[float]] | None:
    """Both columns as floats, or None when a point does not convert or is not finite. With ``grid``, a
    timestamps column equal to the previous converted one is that same list."""
    try:
        known = grid.match(ts_raw) if grid is not None else None
        ts_list = list(map(float, ts_raw)) if known is None else known
        values = list(map(float, values_raw))
    except (TypeError, ValueError):
        return None
    # inf and nan propagate through a sum, so a finite sum proves every addend finite (a sum that
    # overflows merely takes the per-point path); a matched column passed this check when kept
    if (known is not None or math.isfinite(sum(ts_list))) and math.isfinite(sum(values)):
        if grid is not None and known is None:
            grid.keep(ts_raw, ts_list)
        return ts_list, values
    return None


def _parse_points(raw_points: Iterable[Any]) -> tuple[list[float], list[float]]:
    points = [p for p in map(parse_point, raw_points) if p is not None]
    return [ts for ts, _ in points], [v for _, v in points]
