"""Build OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics`` (test data and demos).

Choices (OpenMetrics 1.0 as parsed by promtool 2.42):

* ``add(metric, ...)`` takes the **series name as it will be stored in Prometheus**. One ``# TYPE`` family
  block is written per metric family, families sorted by name, series inside a family sorted by labels,
  samples of one series sorted by time (duplicate timestamps: the last value added wins), then ``# EOF``.
* Counters: OpenMetrics requires counter samples to be named ``<family>_total``. A counter metric must
  therefore be passed with its ``_total`` suffix (``add("requests_total", ..., type="counter")``); the
  family line is ``# TYPE requests counter`` and the samples are ``requests_total{...}``, so the stored
  series is ``requests_total``. Passing a counter name without ``_total`` raises ``ValueError`` (we do not
  silently rename series).
* Other types (``gauge``, ``unknown``) use the name unchanged for family and samples.
* Timestamps: ``datetime`` (naive = UTC) or unix seconds; written as seconds (fractions kept).
  Values: ``NaN``, ``+Inf``, ``-Inf`` are written in OpenMetrics spelling.
* One metric name has one type; adding it again with a different type raises ``ValueError``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TYPES = ("gauge", "counter", "unknown")


def _ts(value: datetime | float | int) -> float:
    if isinstance(value, datetime):
        dt = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        return dt.timestamp()
    return float(value)


def _fmt_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class OpenMetricsWriter:
    def __init__(self) -> None:
        self._types: dict[str, str] = {}
        self._series: dict[str, dict[tuple[tuple[str, str], ...], dict[float, float]]] = {}

    def add(
        self,
        metric: str,
        labels: dict[str, str],
        samples: Iterable[tuple[datetime | float, float]],
        type: str = "gauge",  # shadows the builtin on purpose: public name
    ) -> OpenMetricsWriter:
        if type not in TYPES:
            raise ValueError(f"type must be one of {TYPES}, got {type!r}")
        if not _NAME_RE.match(metric):
            raise ValueError(f"invalid metric name {metric!r}")
        if type == "counter" and not metric.endswith("_total"):
            raise ValueError(f"counter {metric!r} must end with '_total' (OpenMetrics counter sample name)")
        for key in labels:
            if not _LABEL_RE.match(key) or key == "__name__":
                raise ValueError(f"invalid label name {key!r}")
        known = self._types.setdefault(metric, type)
        if known != type:
            raise ValueError(f"metric {metric!r} already added as {known}, not {type}")
        points = self._series.setdefault(metric, {}).setdefault(
            tuple(sorted((str(k), str(v)) for k, v in labels.items())), {}
        )
        for ts, value in samples:
            points[_ts(ts)] = float(value)
        return self

    def text(self) -> str:
        families: dict[str, list[str]] = {}
        for metric in self._series:
            family = metric[: -len("_total")] if self._types[metric] == "counter" else metric
            families.setdefault(family, []).append(metric)
        lines: list[str] = []
        for family in sorted(families):
            metrics = families[family]
            types = {self._types[m] for m in metrics}
            if len(types) > 1:
                raise ValueError(f"metric family {family!r} used with several types: {sorted(types)}")
            lines.append(f"# TYPE {family} {types.pop()}")
            for metric in sorted(metrics):
                for key in sorted(self._series[metric]):
                    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
                    head = f"{metric}{{{label_text}}}" if key else metric
                    points = self._series[metric][key]
                    for ts in sorted(points):
                        lines.append(f"{head} {_fmt_number(points[ts])} {_fmt_number(ts)}")
        lines.append("# EOF")
        return "\n".join(lines) + "\n"
