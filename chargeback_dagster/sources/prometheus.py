"""Prometheus access used by every ecosystem (docs/generic-metrics.md §1).

Rules implemented here (all binding):

* ``POST <url>/api/v1/query_range`` as a form (``query``, ``start``, ``end``, ``step``); the path prefix of
  ``url`` is kept (``https://h/prometheus`` → ``https://h/prometheus/api/v1/query_range``).
* A window is half-open ``[start, end)`` (decision D6): the request carries ``start`` = window start and
  ``end`` = window end − 1 s, RFC 3339 UTC with ``Z``; returned samples outside ``[start, end)`` are dropped.
  Naive datetimes are taken as UTC; bounds are floored to whole milliseconds (Prometheus' precision).
* ``{step}`` in a query becomes ``<step_seconds>s``.
* Ranges longer than 10,000 steps are split client-side into requests of ≤ 10,000 evaluation points each,
  on the same step grid as the whole window; chunk results are merged per label set.
* ``matrix`` (``values``) and ``vector`` (``value``) results are accepted (a ``scalar`` result is read as
  one sample with no labels). ``NaN``, ``±Inf`` and unparseable points are skipped; series left without
  samples are dropped. A label set whose samples sum beyond the float range is skipped with a warning.
* Labels are reduced to the grouping labels of the query's **outermost** aggregation
  (``sum by (team) (x)`` → ``{team}``; ``sum(x) by (a, b)`` → ``{a, b}``; ``sum without (a) (x)`` → every
  returned label except ``a`` and ``__name__``; an aggregation without a clause or no aggregation at all →
  ``{}``). If the reduction makes several returned series share one label set, their values at the same
  timestamp are **added** (as if the query had been ``sum by (<labels>)``), so a series never holds two
  samples for one timestamp.
* ``warnings`` are logged at WARNING on logger ``chargeback_dagster.prometheus``.
* Retries (``RetryPolicy`` of ``sources/http.py``): HTTP 408, 425, 429, 500, 502, 503, 504 and transport
  errors (including timeouts), at most 4 attempts; before retry ``n`` (1..3) wait ``2^n × U(0.8, 1.2)`` s,
  or ``Retry-After`` (seconds or HTTP date) capped at 60 s.
  Exhausted → ``MetricsQueryError("Exhausted 4 attempts for <url>: <last error>")``.
* Any other HTTP status ≥ 400 → ``MetricsQueryError("HTTP <code>: <first 200 chars of body>")`` without
  retry (this includes Prometheus' own 400/422 JSON error bodies, whose ``errorType``/``error`` therefore
  appear inside the body text). A 2xx body with ``"status": "error"`` →
  ``MetricsQueryError("<errorType>: <error>")``.
* Each request has a total time limit (``timeout``, 60 s: connect, send and the whole body, see
  ``sources/http.py``); ``deadline_left()`` (seconds, None = no deadline) also cuts an in-flight request
  short at the run's deadline, after which the retry wait (``sleep``, bounded by the same deadline) fails
  the run.
* Credentials never appear in errors or logs: URLs are shown without user-info and query string, and any
  configured password / token text is masked as ``***`` in error messages.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, overload

import httpx

from chargeback_dagster.sources import http
from chargeback_dagster.sources import prometheus_columns as pc
from chargeback_dagster.sources.promql import grouping_labels

logger = logging.getLogger("chargeback_dagster.prometheus")

MAX_POINTS_PER_REQUEST = 10_000
MAX_ATTEMPTS = 4
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_AFTER_CAP_SECONDS = 60.0
AUTH_TYPES = ("none", "basic", "bearer")

__all__ = [
    "MetricsQueryError",
    "PrometheusClient",
    "RangeQuery",
    "Samples",
    "Series",
    "day_window",
    "overflow_message",
    "reduce_series",
    "sample_sum",
]


class MetricsQueryError(Exception):
    """A Prometheus query failed (HTTP, transport, protocol or PromQL error). Never contains credentials."""


class Samples(Sequence[tuple[float, float]]):
    """``(timestamp, value)`` pairs kept as two columns, the form query results are built and reduced in
    (no tuple per sample); reads and compares like the equivalent list of tuples."""

    __slots__ = ("timestamps", "values")

    def __init__(self, timestamps: list[float], values: list[float]) -> None:
        if len(timestamps) != len(values):
            raise ValueError("timestamps and values differ in length")
        self.timestamps = timestamps
        self.values = values

    def __len__(self) -> int:
        return len(self.timestamps)

    @overload
    def __getitem__(self, index: int) -> tuple[float, float]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[float, float]]: ...

    def __getitem__(self, index: int | slice) -> tuple[float, float] | list[tuple[float, float]]:
        if isinstance(index, slice):
            return list(zip(self.timestamps[index], self.values[index], strict=True))
        return self.timestamps[index], self.values[index]

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return zip(self.timestamps, self.values, strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Samples):
            return self.timestamps == other.timestamps and self.values == other.values
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    # (unix timestamp seconds, value), ascending by timestamp; a Samples in query results
    samples: Sequence[tuple[float, float]]

    def columns(self) -> tuple[list[float], list[float]]:
        """``(timestamps, values)``: the Samples' own lists (read only) or new ones."""
        if isinstance(self.samples, Samples):
            return self.samples.timestamps, self.samples.values
        return [ts for ts, _ in self.samples], [v for _, v in self.samples]


_LabelKey = tuple[tuple[str, str], ...]  # a label set as its sorted items


@dataclass(frozen=True)
class RangeQuery:
    """A range query over the half-open window ``[start, end)``. Hashable: used as a de-duplication key."""

    query: str
    start: datetime
    end: datetime
    step_seconds: int


# --------------------------------------------------------------------------------------------- helpers


def day_window(d: date) -> tuple[datetime, datetime]:
    """The UTC day ``[d 00:00Z, d+1 00:00Z)`` (decision D6)."""
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def sample_sum(values: list[float]) -> float | None:
    """``math.fsum`` of sample values; None when the sum lies beyond the float range (±1.8e308).

    Such a sum is bad data like a NaN sample: the caller skips and reports it instead of failing the run.
    The common path is one fsum; only an overflow retries (on halved values, exact: fsum also overflows
    when just a partial sum does)."""
    try:
        total = math.fsum(values)
    except OverflowError:
        try:
            total = math.fsum([v * 0.5 for v in values]) * 2.0
        except OverflowError:
            return None
    return total if math.isfinite(total) else None


def reduce_series(
    series: list[Series], day: date | None = None
) -> list[tuple[dict[str, str], float, float, int]]:
    """Per label set: ``(labels, value_sum, value_max, sample_count)``.

    Series with equal label sets are combined. A label set without samples yields ``(labels, 0.0, 0.0, 0)``.
    A label set whose samples sum beyond the float range is left out, with a warning (naming ``day`` when
    given). Rows are ordered by their sorted label items.
    """
    acc: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for s in series:
        key = tuple(sorted(s.labels.items()))
        _, values = s.columns()
        known = acc.get(key)
        if known is None:
            acc[key] = list(values)  # a copy: it may be extended below
        else:
            known.extend(values)
    out = []
    for key in sorted(acc):
        values = acc[key]
        total = sample_sum(values)
        if total is None:
            logger.warning(overflow_message(dict(key), len(values), day))
            continue
        out.append((dict(key), total, max(values) if values else 0.0, len(values)))
    return out


def overflow_message(labels: dict[str, str], count: int, day: date | None = None) -> str:
    on = f" on {day}" if day is not None else ""
    return f"Usage of {labels}{on} skipped: its {count} samples sum beyond the float range"


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _rfc3339(ts: float) -> str:
    """RFC 3339 UTC with ``Z``; fractional seconds (milliseconds) only when present."""
    dt = datetime.fromtimestamp(round(ts * 1000) / 1000, tz=UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].rstrip("0") + "Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _redact_url(url: str) -> str:
    try:
        u = httpx.URL(url)
    except Exception:  # pragma: no cover - defensive
        return "<invalid url>"
    return str(u.copy_with(username=None, password=None, query=None, fragment=None))


# ------------------------------------------------------------------------------ PromQL grouping labels


def _reducer(query: str) -> Callable[[dict[str, str]], dict[str, str]]:
    """The label reduction of the module docstring; raises MetricsQueryError when the query cannot be
    parsed (called once Prometheus has accepted the query, so a bad query fails with Prometheus' message)."""
    try:
        mode, labels = grouping_labels(query)
    except ValueError as exc:
        raise MetricsQueryError(f"Cannot read the grouping labels of the query: {exc}") from None
    if mode == "by":
        keep = set(labels)
        return lambda m: {k: v for k, v in m.items() if k in keep}
    if mode == "without":
        drop = set(labels) | {"__name__"}
        return lambda m: {k: v for k, v in m.items() if k not in drop}
    return lambda m: {}


# ----------------------------------------------------------------------------------------------- client


def _backoff(attempt: int) -> float:
    return (2**attempt) * random.uniform(0.8, 1.2)


_RETRY = http.RetryPolicy(
    attempts=MAX_ATTEMPTS,
    backoff=_backoff,
    max_wait=RETRY_AFTER_CAP_SECONDS,  # the backoff stays below it: it caps the Retry-After wait
    header_statuses=RETRY_STATUSES,
)


class PrometheusClient:
    """Thread-safe Prometheus HTTP API client (see module docstring for the exact rules)."""

    def __init__(
        self,
        url: str,
        *,
        auth_type: str = "none",
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
        timeout: float = 60.0,
        max_workers: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        deadline_left: Callable[[], float | None] = lambda: None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        auth_type = (getattr(auth_type, "value", auth_type) or "none").lower()
        if auth_type not in AUTH_TYPES:
            raise ValueError(f"auth_type must be one of {', '.join(AUTH_TYPES)}, got {auth_type!r}")
        if auth_type == "basic" and not username:
            raise ValueError("auth_type 'basic' needs a username")
        if auth_type == "bearer" and not bearer_token:
            raise ValueError("auth_type 'bearer' needs a bearer_token")
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        parsed = httpx.URL(url)
        url_user, url_password = parsed.username, parsed.password
        # user-info is never put on the wire URL (httpx logs request URLs); it becomes Basic auth instead
        self.url = str(parsed.copy_with(username=None, password=None)).rstrip("/")
        self.safe_url = _redact_url(self.url)
        self.auth_type = auth_type
        self.max_workers = max_workers
        self._sleep = sleep
        self._deadline_left = deadline_left
        self._timeout = timeout
        self._secrets = [s for s in (password, bearer_token, url_password) if s and len(s) >= 3]
        self._lock = threading.Lock()
        self.request_count = 0
        # Uncompressed answers: gzip of a multi-megabyte matrix costs Prometheus more CPU than the query
        # itself (measured: 7-day query 0.55 s instead of 1.2 s), and answers are bounded by the step limit.
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        auth: httpx.Auth | None = None
        if auth_type == "basic":
            auth = httpx.BasicAuth(username or "", password or "")
        elif auth_type == "bearer":
            headers["Authorization"] = f"Bearer {bearer_token}"
        elif url_user or url_password:
            auth = httpx.BasicAuth(url_user, url_password)
        self._http = httpx.Client(
            timeout=timeout,
            headers=headers,
            auth=auth,
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_config(
        cls,
        metrics_config: Any,
        max_workers: int,
        sleep: Callable[[float], None] = time.sleep,
        deadline_left: Callable[[], float | None] = lambda: None,
    ) -> PrometheusClient:
        """Build from a config object with ``url``, ``auth_type``, ``username``, ``password`` (SecretStr |
        None) and ``bearer_token`` (SecretStr | None)."""

        def secret(value: Any) -> str | None:
            if value is None:
                return None
            get = getattr(value, "get_secret_value", None)
            return get() if callable(get) else str(value)

        return cls(
            str(metrics_config.url),
            auth_type=getattr(metrics_config, "auth_type", None) or "none",
            username=getattr(metrics_config, "username", None),
            password=secret(getattr(metrics_config, "password", None)),
            bearer_token=secret(getattr(metrics_config, "bearer_token", None)),
            max_workers=max_workers,
            sleep=sleep,
            deadline_left=deadline_left,
        )

    # -- lifecycle

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusClient(url={self.safe_url!r}, auth_type={self.auth_type!r})"

    # -- public API

    def check(self) -> None:
        """Instant query ``1``; raises MetricsQueryError when Prometheus is unreachable or answers wrongly."""
        form = {"query": "1"}
        self._data(self._post("/api/v1/query", form), form)

    def query_range(self, q: RangeQuery) -> list[Series]:
        if q.step_seconds <= 0:
            raise MetricsQueryError(f"step_seconds must be positive, got {q.step_seconds}")
        # Prometheus works in whole milliseconds: compute the grid and the window filter in integer ms
        start = math.floor(_utc(q.start).timestamp() * 1000)
        end = math.floor(_utc(q.end).timestamp() * 1000)
        if end - start < 1000:
            return []
        step = int(q.step_seconds)
        query = q.query.replace("{step}", f"{step}s")
        reduce: Callable[[dict[str, str]], dict[str, str]] | None = None
        last = end - 1000  # inclusive end sent to Prometheus: window end − 1 s
        # Per label set either the columns of its only series as returned (the usual case: ascending
        # timestamps, all inside the window) or, once it needs filtering or merging, timestamp → value.
        columns: dict[_LabelKey, tuple[list[float], list[float]]] = {}
        points: dict[_LabelKey, dict[float, float]] = {}
        checked: list[float] | None = None  # the timestamps list `ascending` and `inside` describe
        ascending = inside = False
        chunk_start = start
        while chunk_start <= last:
            chunk_end = min(chunk_start + (MAX_POINTS_PER_REQUEST - 1) * step * 1000, last)
            form = {
                "query": query,
                "start": _rfc3339(chunk_start / 1000),
                "end": _rfc3339(chunk_end / 1000),
                "step": str(step),
            }
            response = self._post("/api/v1/query_range", form)
            if reduce is None:  # after Prometheus accepted the query: a bad one fails with its message
                reduce = _reducer(q.query)
            for key, ts_list, values in self._read_series(response, form, reduce):
                if ts_list and key not in columns and key not in points:
                    # a new label set with every sample inside the window is taken as returned: as columns
                    # when its timestamps ascend (Prometheus' order), else as a dict if none repeats
                    if ts_list is not checked:  # series sharing one timestamps list (pc.Grid): one check
                        checked, (ascending, inside) = ts_list, pc.column_shape(ts_list, start, end)
                    if inside:
                        if ascending:
                            columns[key] = (ts_list, values)
                            continue
                        bucket = dict(zip(ts_list, values, strict=True))
                        if len(bucket) == len(ts_list):
                            points[key] = bucket
                            continue
                bucket = points.get(key)
                if bucket is None:
                    known = columns.pop(key, None)
                    bucket = points[key] = dict(zip(*known, strict=True)) if known else {}
                for ts, value in zip(ts_list, values, strict=True):
                    if start <= round(ts * 1000) < end:
                        bucket[ts] = bucket.get(ts, 0.0) + value
            chunk_start += MAX_POINTS_PER_REQUEST * step * 1000
        out = []
        for key in sorted(columns.keys() | points.keys()):
            if key in columns:
                samples = Samples(*columns[key])
            else:
                bucket = points[key]
                if not bucket:
                    continue
                ordered = sorted(bucket)
                samples = Samples(ordered, [bucket[ts] for ts in ordered])
            out.append(Series(labels=dict(key), samples=samples))
        return out

    def query_range_many(
        self, queries: Iterable[RangeQuery]
    ) -> dict[RangeQuery, list[Series] | MetricsQueryError]:
        """Run distinct queries with at most ``max_workers`` in flight; failures are returned, not raised."""
        unique = list(dict.fromkeys(queries))
        if not unique:
            return {}

        def run(q: RangeQuery) -> list[Series] | MetricsQueryError:
            try:
                return self.query_range(q)
            except MetricsQueryError as exc:
                return exc
            except Exception as exc:  # a bug or bad input must not hide the other queries' results
                left = self._deadline_left()
                if left is not None and left <= 0:
                    raise  # the run's deadline (from the bounded retry wait) ends every query of the run
                logger.exception("Unexpected error in Prometheus query")
                return MetricsQueryError(self._scrub(f"{type(exc).__name__}: {exc}"))

        if len(unique) == 1 or self.max_workers == 1:
            return {q: run(q) for q in unique}
        with ThreadPoolExecutor(
            max_workers=min(self.max_workers, len(unique)), thread_name_prefix="prometheus"
        ) as pool:
            results = list(pool.map(run, unique))
        return dict(zip(unique, results, strict=True))

    # -- internals

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _post(self, path: str, form: dict[str, str]) -> httpx.Response:
        """The successful (< 400) response, after the retries of the module docstring."""
        url = self.url + path
        safe_url = self.safe_url + path

        def log(attempt: int, failure: http.Retryable, wait: float) -> None:
            logger.warning(
                "Prometheus request to %s failed (attempt %d/%d): %s; retrying in %.1f s",
                safe_url,
                attempt,
                MAX_ATTEMPTS,
                failure,
                wait,
            )

        try:
            return _RETRY.run(lambda: self._attempt(url, form), sleep=self._sleep, log=log)
        except http.Retryable as exc:
            raise MetricsQueryError(f"Exhausted {MAX_ATTEMPTS} attempts for {safe_url}: {exc}") from None

    def _attempt(self, url: str, form: dict[str, str]) -> httpx.Response:
        with self._lock:
            self.request_count += 1
        try:
            request = self._http.build_request("POST", url, data=form)
            response = http.send(self._http, request, self._timeout, self._deadline_left)
        except httpx.TransportError as exc:
            raise http.Retryable(self._scrub(f"{type(exc).__name__}: {exc}")) from None
        if response.status_code in RETRY_STATUSES:
            raise http.Retryable(self._scrub(f"HTTP {response.status_code}: {response.text[:200]}"), response)
        if response.status_code >= 400:
            raise MetricsQueryError(self._scrub(f"HTTP {response.status_code}: {response.text[:200]}"))
        return response

    def _read_series(
        self,
        response: httpx.Response,
        form: dict[str, str],
        reduce: Callable[[dict[str, str]], dict[str, str]],
    ) -> list[tuple[_LabelKey, list[float], list[float]]]:
        """Each returned series as (reduced label set, timestamps, values); a successful matrix without
        JSON lists (see prometheus_columns)."""
        matrix = pc.decode_matrix(response.content)
        if matrix is None:
            rows = _iter_result_columns(self._data(response, form))
        else:
            self._log_warnings(matrix.warnings, form)
            rows = pc.matrix_columns(matrix.data.result)
        return [(tuple(sorted(reduce(m).items())), ts, vs) for m, ts, vs in rows]

    def _log_warnings(self, warnings: Iterable[Any], form: dict[str, str]) -> None:
        for warning in warnings:
            logger.warning(
                "Prometheus warning for query %r: %s", form.get("query"), self._scrub(str(warning))
            )

    def _data(self, response: httpx.Response, form: dict[str, str]) -> dict[str, Any]:
        """The ``data`` object of a 2xx response (logs ``warnings``, raises on ``"status": "error"``)."""
        try:
            payload = pc.loads(response.content)
        except ValueError:
            raise MetricsQueryError(
                self._scrub(
                    f"Invalid JSON from Prometheus (HTTP {response.status_code}): {response.text[:200]}"
                )
            ) from None
        if not isinstance(payload, dict):
            raise MetricsQueryError(self._scrub(f"Unexpected Prometheus response: {response.text[:200]}"))
        self._log_warnings(payload.get("warnings") or [], form)
        if payload.get("status") != "success":
            if payload.get("status") == "error":
                raise MetricsQueryError(
                    self._scrub(f"{payload.get('errorType', 'error')}: {payload.get('error', '')}")
                )
            raise MetricsQueryError(self._scrub(f"Unexpected Prometheus response: {response.text[:200]}"))
        data = payload.get("data")
        return data if isinstance(data, dict) else {}


def _iter_result_columns(data: dict[str, Any]) -> Iterable[tuple[dict[str, str], list[float], list[float]]]:
    """Like _iter_result, with each series' samples as (timestamps, values) columns."""
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        for metric, points in _iter_result(data):
            yield metric, [ts for ts, _ in points], [v for _, v in points]
        return
    grid = pc.Grid()
    for item in data["result"]:
        if not isinstance(item, dict):
            continue
        metric = item.get("metric") or {}
        raw_points = item.get("values") if "values" in item else [item.get("value")]
        if isinstance(raw_points, list) and raw_points:
            ts_list, values = pc.columns(raw_points, grid)
        else:
            ts_list, values = [], []
        yield {str(k): str(v) for k, v in metric.items()}, ts_list, values


def _iter_result(data: dict[str, Any]) -> Iterable[tuple[dict[str, str], list[tuple[float, float]]]]:
    result_type = data.get("resultType")
    result = data.get("result")
    if result_type == "scalar":
        point = pc.parse_point(result)
        yield {}, [point] if point else []
        return
    if result_type not in ("matrix", "vector") or not isinstance(result, list):
        raise MetricsQueryError(f"Unsupported Prometheus result type: {result_type!r}")
    for item in result:
        if not isinstance(item, dict):
            continue
        metric = item.get("metric") or {}
        raw_points = item.get("values") if "values" in item else [item.get("value")]
        points = [p for p in map(pc.parse_point, raw_points or []) if p is not None]
        yield {str(k): str(v) for k, v in metric.items()}, points
