"""Confluent Cloud REST client (docs/confluent-cloud.md §2).

Rules implemented here (all binding):

* HTTP Basic auth, ``Accept: application/json``, a total time limit per request (30 s by default: connect,
  send and the whole body, see ``sources/http.py``) and one pooled ``httpx.Client`` per instance.
* Throttle: at least ``min_interval`` seconds (100 ms) between the starts of consecutive requests.
* Responses: 200 → JSON body; 404 → ``{"data": []}``; 401/403 → credentials error (no retry, body never
  logged); 429 / 500 / 502 / 503 / 504 / timeout / connection error → retry; any other status → error
  carrying the first 500 characters of the body (no retry).
* Retry policy (``RetryPolicy`` of ``sources/http.py``): at most 6 attempts. Before retry ``n`` (1..5):
  for 429 the wait comes from ``Retry-After`` (seconds or an HTTP-date converted to seconds from now), else
  ``X-RateLimit-Reset`` read as *relative* seconds, as ``max(header, 1) × U(1.1, 1.2)``; without either
  header (and for every other retryable failure) the backoff ``2 × 2^(n−1) + U(0, 1)``. Every wait is
  capped at 120 s and logged at WARNING.
* ``check_deadline()`` is called before every request and before every retry wait, so waits count against
  the tenant's execution timeout (it raises to abort); ``deadline_left()`` (seconds, None = no deadline)
  cuts an in-flight request and a retry wait short at that deadline.
* Pagination (``list_all``): ``page_size`` is sent when given; items are read from ``data``; a non-empty
  ``metadata.next`` carrying a ``page_token`` query parameter repeats the request with that token; a token
  seen twice → ``Pagination loop detected for GET <path>``; an HTTP 400 on a request that carried a
  ``page_token`` (expired cursor) restarts the listing from page one once, discarding collected items.
* The ``<path>`` in messages is the request path without query string. Credentials never appear in logs
  or error messages.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from chargeback_dagster.sources import http

__all__ = ["ConfluentApiError", "ConfluentClient", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 6
MAX_WAIT_SECONDS = 120.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
RATE_LIMIT_STATUSES = frozenset({429})  # the statuses whose wait headers count
BODY_CHARS = 500

_default_logger = logging.getLogger("chargeback_dagster.confluent")


class ConfluentApiError(Exception):
    """A Confluent Cloud API call failed. ``status`` is the last HTTP status (None for transport errors)."""

    def __init__(self, message: str, *, status: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.path = path


def _message_path(path: str) -> str:
    """URL path of ``path`` (a path or a full URL) without query string or fragment."""
    return urlsplit(path).path or "/"


class ConfluentClient:
    def __init__(
        self,
        base_url: str,
        key: str,
        secret: str,
        *,
        timeout: float = 30.0,
        min_interval: float = 0.1,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        check_deadline: Callable[[], None] = lambda: None,
        deadline_left: Callable[[], float | None] = lambda: None,
        transport: httpx.BaseTransport | None = None,
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        parse_float: Callable[[str], Any] | None = None,
        backoff_scale: float = 1.0,
    ) -> None:
        # parse_float: e.g. ``Decimal`` so JSON numbers keep their exact text (billing amounts).
        # backoff_scale: multiplies the exponential backoff only (never a provider-given 429 wait); < 1
        # is for tests only.
        self._parse_float = parse_float
        self.backoff_scale = backoff_scale
        self.base_url = base_url.rstrip("/")
        self.min_interval = min_interval
        self.max_attempts = max_attempts
        self.request_count = 0
        self._sleep = sleep
        self._clock = clock
        self._check_deadline = check_deadline
        self._deadline_left = deadline_left
        self._timeout = timeout
        self._log = logger or _default_logger
        self._rng = rng or random.Random()
        self._now = wall_clock
        self._last_request: float | None = None
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=httpx.BasicAuth(key, secret),
            headers={"Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    # -- public

    def get(self, path: str, params: dict | None = None) -> dict:
        """One GET with the retry policy; 404 → ``{"data": []}``."""
        shown = _message_path(path)

        def attempt() -> dict:
            self._check_deadline()
            self._throttle()
            self.request_count += 1
            try:
                request = self._http.build_request("GET", path, params=params)
                response = http.send(self._http, request, self._timeout, self._deadline_left)
            except httpx.TransportError as exc:  # timeouts, connection errors, protocol errors
                raise http.Retryable(str(exc).strip() or type(exc).__name__) from None
            status = response.status_code
            if status == 404:
                return {"data": []}
            if 200 <= status < 300:
                return self._json(response, shown)
            if status in AUTH_STATUSES:
                raise ConfluentApiError(
                    f"Confluent Cloud API rejected credentials (HTTP {status}) for GET {shown}; "
                    "check ccloud_api.key/secret and the service account's roles",
                    status=status,
                    path=shown,
                )
            if status not in RETRY_STATUSES:
                raise ConfluentApiError(
                    f"Confluent Cloud API error HTTP {status} for GET {shown}: {response.text[:BODY_CHARS]}",
                    status=status,
                    path=shown,
                )
            raise http.Retryable(f"HTTP {status}", response)

        def log(attempt: int, failure: http.Retryable, wait: float) -> None:
            self._log.warning(
                "Confluent Cloud GET %s: %s on attempt %d/%d; retrying in %.2f s",
                shown,
                failure,
                attempt,
                self.max_attempts,
                wait,
            )

        def sleep(wait: float) -> None:
            left = self._deadline_left()
            self._sleep(wait if left is None else min(wait, max(left, 0.0)))  # then the next check fails

        try:
            # a request cut off by the run's deadline is not retried: the check before the wait raises
            return self._policy().run(attempt, sleep=sleep, log=log, before_wait=self._check_deadline)
        except http.Retryable as exc:
            raise ConfluentApiError(
                f"GET {shown} failed after {self.max_attempts} attempts: {exc}",
                status=exc.response.status_code if exc.response is not None else None,
                path=shown,
            ) from None

    def list_all(self, path: str, params: dict | None = None, page_size: int | None = None) -> list[dict]:
        """All items of a paginated list call (``data`` of every page)."""
        shown = _message_path(path)
        base_params: dict[str, Any] = dict(params or {})
        if page_size is not None:
            base_params["page_size"] = page_size
        restarted = False
        while True:
            items: list[dict] = []
            seen: set[str] = set()
            token: str | None = None
            try:
                while True:
                    request_params = dict(base_params)
                    if token is not None:
                        request_params["page_token"] = token
                    try:
                        body = self.get(path, request_params)
                    except ConfluentApiError as exc:
                        if exc.status == 400 and token is not None and not restarted:
                            raise _RestartListing from exc
                        raise
                    data = body.get("data") if isinstance(body, dict) else None
                    if isinstance(data, list):
                        items.extend(data)
                    token = self._next_token(body)
                    if token is None:
                        return items
                    if token in seen:
                        raise ConfluentApiError(f"Pagination loop detected for GET {shown}", path=shown)
                    seen.add(token)
            except _RestartListing:
                restarted = True
                self._log.warning(
                    "Confluent Cloud GET %s: page token rejected (HTTP 400); restarting the listing", shown
                )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConfluentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _throttle(self) -> None:
        if self._last_request is not None and self.min_interval > 0:
            elapsed = self._clock() - self._last_request
            if elapsed < self.min_interval:
                self._sleep(self.min_interval - elapsed)
        self._last_request = self._clock()

    def _policy(self) -> http.RetryPolicy:
        """The rule of the module docstring (read per call: ``max_attempts`` and ``backoff_scale`` are
        public attributes)."""
        return http.RetryPolicy(
            attempts=self.max_attempts,
            backoff=lambda n: (2.0 * 2 ** (n - 1) + self._rng.uniform(0.0, 1.0)) * self.backoff_scale,
            max_wait=MAX_WAIT_SECONDS,
            header_statuses=RATE_LIMIT_STATUSES,
            header_wait=lambda seconds: max(seconds, 1.0) * self._rng.uniform(1.1, 1.2),
            rate_limit_reset=True,
            now=self._now,
        )

    def _json(self, response: httpx.Response, shown: str) -> dict:
        try:
            body = (
                json.loads(response.text, parse_float=self._parse_float)
                if self._parse_float is not None
                else response.json()
            )
        except ValueError as exc:
            raise ConfluentApiError(
                f"Confluent Cloud API returned invalid JSON for GET {shown}: {response.text[:BODY_CHARS]}",
                status=response.status_code,
                path=shown,
            ) from exc
        return body

    @staticmethod
    def _next_token(body: Any) -> str | None:
        if not isinstance(body, dict):
            return None
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            return None
        next_url = metadata.get("next")
        if not isinstance(next_url, str) or not next_url.strip():
            return None
        tokens = parse_qs(urlsplit(next_url).query).get("page_token")
        if not tokens or not tokens[0]:
            return None
        return tokens[0]


class _RestartListing(Exception):
    """Internal: an expired page token asks ``list_all`` to start again from page one."""
