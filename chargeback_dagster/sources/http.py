"""HTTP for every source: one retry policy, one Retry-After parser, and requests with a total time limit.

* ``RetryPolicy.run`` retries a request (a tenacity ``Retrying`` loop) while it fails with ``Retryable``: the
  attempt count, the backoff, the cap on a wait and which statuses' rate-limit headers count are the
  caller's (docs/confluent-cloud.md §2, docs/generic-metrics.md §1); so are the sleep (the run's deadline
  bounds it) and the log line. The last failure is re-raised for the caller to word its own error.
* ``retry_after`` reads ``Retry-After`` (seconds or an HTTP date) and optionally ``X-RateLimit-Reset``
  (relative seconds until the limit resets, as Confluent Cloud documents it; never an epoch time).
* ``send``: httpx's timeouts bound each socket operation, so a server that trickles its answer (a few bytes
  every second) keeps a request alive indefinitely. ``send`` bounds the whole request — connect, send,
  headers and the complete body — by a total limit and, when the caller has one, by the run's deadline:
  every socket operation is capped at the time left when the request starts, and the body is read in
  chunks with the clock checked after each chunk. (A server that goes silent part-way is ended by that
  capped read timeout.)
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import tenacity

__all__ = ["RetryPolicy", "Retryable", "retry_after", "send"]

T = TypeVar("T")


class Retryable(Exception):
    """An attempt that failed in a way worth another one. ``response`` (None for transport errors) carries
    the status and the rate-limit headers."""

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


def retry_after(headers: Mapping[str, str], now: datetime, *, rate_limit_reset: bool = False) -> float | None:
    """Seconds (≥ 0) the server asks to wait: ``Retry-After`` as seconds or as an HTTP date (seconds from
    ``now``); else, with ``rate_limit_reset``, ``X-RateLimit-Reset`` as relative seconds. None when absent
    or unreadable."""
    text = (headers.get("Retry-After") or "").strip()
    if text:
        seconds = _seconds(text)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
                seconds = (when - now).total_seconds()
        if seconds is not None:
            return max(seconds, 0.0)
    text = (headers.get("X-RateLimit-Reset") or "").strip() if rate_limit_reset else ""
    seconds = _seconds(text) if text else None
    return None if seconds is None else max(seconds, 0.0)


def _seconds(text: str) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        return None
    return None if math.isnan(seconds) else seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How one client retries. The wait before retry ``n`` (``n`` = the failed attempt, 1-based) is
    ``header_wait(seconds)`` when the failed response has a status in ``header_statuses`` and names a wait
    (see ``retry_after``), else ``backoff(n)``; never more than ``max_wait``."""

    attempts: int
    backoff: Callable[[int], float]
    max_wait: float
    header_statuses: frozenset[int]
    header_wait: Callable[[float], float] = lambda seconds: seconds
    rate_limit_reset: bool = False
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def wait(self, attempt: int, response: httpx.Response | None) -> float:
        header = None
        if response is not None and response.status_code in self.header_statuses:
            header = retry_after(response.headers, self.now(), rate_limit_reset=self.rate_limit_reset)
        wait = self.backoff(attempt) if header is None else self.header_wait(header)
        return min(wait, self.max_wait)

    def run(
        self,
        attempt: Callable[[], T],
        *,
        sleep: Callable[[float], None],
        log: Callable[[int, Retryable, float], None],
        before_wait: Callable[[], None] = lambda: None,
    ) -> T:
        """``attempt()``'s result, calling it again after each ``Retryable`` up to ``attempts`` times.

        Before each wait ``before_wait()`` (e.g. the run's deadline check, which raises to stop) and then
        ``log(n, failure, seconds)`` run; any other exception, and the last ``Retryable``, propagate."""

        def retry(state: tenacity.RetryCallState) -> bool:
            # the attempt limit is part of the retry test (not a tenacity stop), so no wait is computed
            # after the last attempt and its own exception propagates
            failure = state.outcome.exception() if state.outcome is not None else None
            return isinstance(failure, Retryable) and state.attempt_number < self.attempts

        def wait(state: tenacity.RetryCallState) -> float:
            return self.wait(state.attempt_number, _failure(state).response)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            before_wait()
            log(state.attempt_number, _failure(state), state.upcoming_sleep)

        retrying = tenacity.Retrying(retry=retry, wait=wait, sleep=sleep, before_sleep=before_sleep)
        return retrying(attempt)


def _failure(state: tenacity.RetryCallState) -> Retryable:
    failure = state.outcome.exception() if state.outcome is not None else None
    assert isinstance(failure, Retryable)  # only Retryable failures are retried
    return failure


def _cap(seconds: float | None, budget: float) -> float:
    return budget if seconds is None else min(seconds, budget)


def send(
    client: httpx.Client,
    request: httpx.Request,
    limit: float,
    deadline_left: Callable[[], float | None] = lambda: None,
) -> httpx.Response:
    """`request` sent by `client` and its whole body read within `limit` seconds and within the seconds
    `deadline_left()` reports (None: no deadline).

    Running out of time raises an httpx.TimeoutException, which callers retry like any other timeout."""
    end = time.monotonic() + limit

    def left() -> tuple[float, str]:
        own = end - time.monotonic()
        run = deadline_left()
        if run is not None and run < own:
            return run, "the run's execution deadline was reached"
        return own, f"no complete response within the total time limit of {limit:g} s"

    budget, reason = left()
    if budget <= 0:
        raise httpx.ConnectTimeout(reason, request=request)
    timeout = client.timeout
    request.extensions["timeout"] = httpx.Timeout(
        connect=_cap(timeout.connect, budget),
        read=_cap(timeout.read, budget),
        write=_cap(timeout.write, budget),
        pool=_cap(timeout.pool, budget),
    ).as_dict()
    response = client.send(request, stream=True)
    if response.is_stream_consumed:  # built in memory (httpx.MockTransport): nothing left to wait for
        return response
    try:
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            budget, reason = left()
            if budget <= 0:
                raise httpx.ReadTimeout(reason, request=request)
    finally:
        response.close()
    # the raw (still encoded) body: the new response decodes it once, as httpx would have
    return httpx.Response(
        response.status_code, headers=response.headers, content=bytes(body), request=request
    )
