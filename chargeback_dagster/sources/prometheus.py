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
* Retries: HTTP 408, 425, 429, 500, 502, 503, 504 and transport errors (including timeouts), at most 4
  attempts; before retry ``n`` (1..3) wait ``2^n × U(0.8, 1.2)`` s, or ``Retry-After`` (seconds or HTTP date)
  capped at 60 s. Exhausted → ``MetricsQueryError("Exhausted 4 attempts for <url>: <last error>")``.
* Any other HTTP status ≥ 400 → ``MetricsQueryError("HTTP <code>: <first 200 chars of body>")`` without
  retry (this includes Prometheus' own 400/422 JSON error bodies, whose ``errorType``/``error`` therefore
  appear inside the body text). A 2xx body with ``"status": "error"`` →
  ``MetricsQueryError("<errorType>: <error>")``.
* Each request has a total time limit (``timeout``, 60 s: connect, send and the whole body, see
  ``timed_http``); ``deadline_left()`` (seconds, None = no deadline) also cuts an in-flight request short at
  the run's deadline, after which the retry wait (``sleep``, bounded by the same deadline) fails the run.
* Credentials never appear in errors or logs: URLs are shown without user-info and query string, and any
  configured password / token text is masked as ``***`` in error messages.
"""

from __future__ import annotations

import email.utils
import gc
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import lt
from typing import Any, overload

import httpx
import orjson

from chargeback_dagster.sources import timed_http

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
    "grouping_labels",
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

_AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)


def _tokenize(query: str) -> list[tuple[str, str, int]]:
    """(kind, text, paren depth) tokens; strings, label matchers ``{..}`` and ranges ``[..]`` are skipped."""
    tokens: list[tuple[str, str, int]] = []
    depth = 0
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif c == "#":  # comment to end of line
            while i < n and query[i] != "\n":
                i += 1
        elif c in "\"'`":
            j = i + 1
            while j < n and query[j] != c:
                j += 2 if query[j] == "\\" and c != "`" else 1
            i = j + 1
        elif c in "{[":
            close = "}" if c == "{" else "]"
            j = i + 1
            while j < n and query[j] != close:
                if query[j] in "\"'`":
                    q = query[j]
                    j += 1
                    while j < n and query[j] != q:
                        j += 2 if query[j] == "\\" and q != "`" else 1
                j += 1
            i = j + 1
        elif c == "(":
            tokens.append(("(", c, depth))
            depth += 1
            i += 1
        elif c == ")":
            depth -= 1
            tokens.append((")", c, depth))
            i += 1
        elif c.isalpha() or c in "_:":
            j = i
            while j < n and (query[j].isalnum() or query[j] in "_:"):
                j += 1
            tokens.append(("id", query[i:j], depth))
            i = j
        else:
            tokens.append(("op", c, depth))
            i += 1
    return tokens


def _label_list(tokens: list[tuple[str, str, int]], i: int) -> tuple[list[str], int]:
    """Parse ``( a, b )`` starting at tokens[i] == '('; returns labels and the index after ')'."""
    labels: list[str] = []
    if i >= len(tokens) or tokens[i][0] != "(":
        return labels, i
    i += 1
    while i < len(tokens) and tokens[i][0] != ")":
        if tokens[i][0] == "id":
            labels.append(tokens[i][1])
        i += 1
    return labels, i + 1


def _skip_group(tokens: list[tuple[str, str, int]], i: int) -> int:
    """tokens[i] == '(' → index after its matching ')'."""
    depth = tokens[i][2]
    i += 1
    while i < len(tokens) and not (tokens[i][0] == ")" and tokens[i][2] == depth):
        i += 1
    return i + 1


def grouping_labels(query: str) -> tuple[str, tuple[str, ...]]:
    """Grouping of the outermost aggregation: ``("by", labels)``, ``("without", labels)`` or ``("none", ())``.

    The outermost aggregation is the first aggregation operator at the smallest parenthesis depth.
    """
    tokens = _tokenize(query)
    best: int | None = None
    for idx, (kind, text, depth) in enumerate(tokens):
        if kind != "id" or text.lower() not in _AGGREGATIONS:
            continue
        nxt = tokens[idx + 1] if idx + 1 < len(tokens) else None
        if nxt is None or not (nxt[0] == "(" or (nxt[0] == "id" and nxt[1].lower() in ("by", "without"))):
            continue
        if best is None or depth < tokens[best][2]:
            best = idx
    if best is None:
        return "none", ()
    i = best + 1
    if tokens[i][0] == "id":  # sum by (a) (...)
        mode = tokens[i][1].lower()
        labels, _ = _label_list(tokens, i + 1)
        return mode, tuple(labels)
    i = _skip_group(tokens, i)  # sum (...) by (a)
    if i < len(tokens) and tokens[i][0] == "id" and tokens[i][1].lower() in ("by", "without"):
        labels, _ = _label_list(tokens, i + 1)
        return tokens[i][1].lower(), tuple(labels)
    return "none", ()


def _reducer(query: str) -> Callable[[dict[str, str]], dict[str, str]]:
    mode, labels = grouping_labels(query)
    if mode == "by":
        keep = set(labels)
        return lambda m: {k: v for k, v in m.items() if k in keep}
    if mode == "without":
        drop = set(labels) | {"__name__"}
        return lambda m: {k: v for k, v in m.items() if k not in drop}
    return lambda m: {}


# ----------------------------------------------------------------------------------------------- client


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = (_utc(when) - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


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
        reduce = _reducer(q.query)
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
            for key, ts_list, values in self._read_series(response, form, reduce):
                if ts_list and key not in columns and key not in points:
                    # a new label set with every sample inside the window is taken as returned: as columns
                    # when its timestamps ascend (Prometheus' order), else as a dict if none repeats
                    if ts_list is not checked:  # series sharing one timestamps list (_columns): one check
                        checked, (ascending, inside) = ts_list, _column_shape(ts_list, start, end)
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
        last_error = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._attempt(url, form)
            except _RetryableError as exc:
                last_error = str(exc)
                if attempt == MAX_ATTEMPTS:
                    break
                wait = exc.retry_after
                if wait is None:
                    wait = (2**attempt) * random.uniform(0.8, 1.2)
                logger.warning(
                    "Prometheus request to %s failed (attempt %d/%d): %s; retrying in %.1f s",
                    safe_url,
                    attempt,
                    MAX_ATTEMPTS,
                    last_error,
                    wait,
                )
                self._sleep(wait)
        raise MetricsQueryError(f"Exhausted {MAX_ATTEMPTS} attempts for {safe_url}: {last_error}")

    def _attempt(self, url: str, form: dict[str, str]) -> httpx.Response:
        with self._lock:
            self.request_count += 1
        try:
            request = self._http.build_request("POST", url, data=form)
            response = timed_http.send(self._http, request, self._timeout, self._deadline_left)
        except httpx.TransportError as exc:
            raise _RetryableError(self._scrub(f"{type(exc).__name__}: {exc}")) from None
        if response.status_code in RETRY_STATUSES:
            raise _RetryableError(
                self._scrub(f"HTTP {response.status_code}: {response.text[:200]}"),
                _parse_retry_after(response.headers.get("Retry-After")),
            )
        if response.status_code >= 400:
            raise MetricsQueryError(self._scrub(f"HTTP {response.status_code}: {response.text[:200]}"))
        return response

    def _read_series(
        self,
        response: httpx.Response,
        form: dict[str, str],
        reduce: Callable[[dict[str, str]], dict[str, str]],
    ) -> list[tuple[_LabelKey, list[float], list[float]]]:
        """Each returned series as (reduced label set, timestamps, values).

        The cyclic garbage collector is paused meanwhile: a 7-day matrix is ~10^5 small lists that stay
        alive until they are converted, so collections triggered by their allocation would only traverse
        them again and again (measured: 2-3x the parse time); the JSON tree holds no cycles."""
        with _gc_paused():
            data = self._data(response, form)
            series = [(tuple(sorted(reduce(m).items())), ts, vs) for m, ts, vs in _iter_result_columns(data)]
            del data  # freed before collections resume
        return series

    def _data(self, response: httpx.Response, form: dict[str, str]) -> dict[str, Any]:
        """The ``data`` object of a 2xx response (logs ``warnings``, raises on ``"status": "error"``)."""
        try:
            payload = _loads(response.content)
        except ValueError:
            raise MetricsQueryError(
                self._scrub(
                    f"Invalid JSON from Prometheus (HTTP {response.status_code}): {response.text[:200]}"
                )
            ) from None
        if not isinstance(payload, dict):
            raise MetricsQueryError(self._scrub(f"Unexpected Prometheus response: {response.text[:200]}"))
        for warning in payload.get("warnings") or []:
            logger.warning(
                "Prometheus warning for query %r: %s", form.get("query"), self._scrub(str(warning))
            )
        if payload.get("status") != "success":
            if payload.get("status") == "error":
                raise MetricsQueryError(
                    self._scrub(f"{payload.get('errorType', 'error')}: {payload.get('error', '')}")
                )
            raise MetricsQueryError(self._scrub(f"Unexpected Prometheus response: {response.text[:200]}"))
        data = payload.get("data")
        return data if isinstance(data, dict) else {}


_gc_lock = threading.Lock()
_gc_pauses = 0  # _gc_paused blocks running in any thread
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Automatic garbage collection off while any thread is inside such a block, restored after the last."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _column_shape(ts_list: list[float], start: int, end: int) -> tuple[bool, bool]:
    """``(ascending, inside)`` of a non-empty timestamps column: whether it strictly ascends and whether
    every timestamp lies in the window ``[start, end)`` (integer milliseconds)."""
    ascending = all(map(lt, ts_list, ts_list[1:]))
    first, final = (ts_list[0], ts_list[-1]) if ascending else (min(ts_list), max(ts_list))
    return ascending, start <= round(first * 1000) and round(final * 1000) < end


def _loads(content: bytes) -> Any:
    """The JSON body, parsed by orjson (several times faster than json on large matrices). What orjson
    rejects but json accepts (NaN/Infinity literals, UTF-16/32, lone surrogates) is parsed by json, as the
    client always did (httpx's ``Response.json()`` is ``json.loads(content)``)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def _parse_point(point: Any) -> tuple[float, float] | None:
    try:
        ts, raw = point
        value = float(raw)
        ts = float(ts)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or not math.isfinite(ts):
        return None
    return ts, value


class _Grid:
    """The last timestamps column _columns converted for a response, reused for the next equal column: the
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


def _columns(raw_points: list[Any], grid: _Grid | None = None) -> tuple[list[float], list[float]]:
    """Timestamps and values of a ``values`` array; non-finite and unparseable points skipped.

    Fast path: transpose and convert the whole array at C level (unpacking into two columns accepts exactly
    what ``ts, value = point`` accepts); any oddity falls back to per-point parsing. With ``grid``, a
    timestamps column equal to the previous fast-path one is that same list."""
    try:
        ts_raw, values_raw = zip(*raw_points, strict=True)
        known = grid.match(ts_raw) if grid is not None else None
        ts_list = list(map(float, ts_raw)) if known is None else known
        values = list(map(float, values_raw))
    except (TypeError, ValueError):
        pass
    else:
        # inf and nan propagate through a sum, so a finite sum proves every addend finite (a sum that
        # overflows merely takes the per-point path); a matched column passed this check when kept
        if (known is not None or math.isfinite(sum(ts_list))) and math.isfinite(sum(values)):
            if grid is not None and known is None:
                grid.keep(ts_raw, ts_list)
            return ts_list, values
    points = [p for p in map(_parse_point, raw_points) if p is not None]
    return [ts for ts, _ in points], [v for _, v in points]


def _iter_result_columns(data: dict[str, Any]) -> Iterable[tuple[dict[str, str], list[float], list[float]]]:
    """Like _iter_result, with each series' samples as (timestamps, values) columns."""
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        for metric, points in _iter_result(data):
            yield metric, [ts for ts, _ in points], [v for _, v in points]
        return
    grid = _Grid()
    for item in data["result"]:
        if not isinstance(item, dict):
            continue
        metric = item.get("metric") or {}
        raw_points = item.get("values") if "values" in item else [item.get("value")]
        if isinstance(raw_points, list) and raw_points:
            ts_list, values = _columns(raw_points, grid)
        else:
            ts_list, values = [], []
        yield {str(k): str(v) for k, v in metric.items()}, ts_list, values


def _iter_result(data: dict[str, Any]) -> Iterable[tuple[dict[str, str], list[tuple[float, float]]]]:
    result_type = data.get("resultType")
    result = data.get("result")
    if result_type == "scalar":
        point = _parse_point(result)
        yield {}, [point] if point else []
        return
    if result_type not in ("matrix", "vector") or not isinstance(result, list):
        raise MetricsQueryError(f"Unsupported Prometheus result type: {result_type!r}")
    for item in result:
        if not isinstance(item, dict):
            continue
        metric = item.get("metric") or {}
        raw_points = item.get("values") if "values" in item else [item.get("value")]
        points = [p for p in map(_parse_point, raw_points or []) if p is not None]
        yield {str(k): str(v) for k, v in metric.items()}, points
