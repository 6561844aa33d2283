"""Fault injection for the simulator's HTTP API: rate limits (429 with Retry-After / X-RateLimit-Reset),
5xx answers, slowness, outages and broken page tokens, switched at runtime."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chargeback_dagster.devtools.ccloud_simulator.common import ApiError

RATE_LIMIT_HEADERS = ("retry-after", "retry-after-date", "x-ratelimit-reset", "none")


@dataclass
class Faults:
    """Fault injection; counters are consumed as requests arrive. Replace at runtime: ``sim.faults = ...``.

    * ``rate_limit_burst``: the next N matching requests answer 429 with the header chosen by
      ``rate_limit_header`` (``retry-after`` seconds, ``retry-after-date`` HTTP-date, ``x-ratelimit-reset``
      relative seconds, ``none``) carrying ``rate_limit_seconds``.
    * ``server_errors``: the next N matching requests answer ``server_error_status`` (503).
    * ``slow_seconds``: every matching request is delayed by this much before answering.
    * ``down``: every matching request answers 503.
    * ``paths``: URL-path prefixes the faults apply to (empty = every path).
    * ``fail_page_token_once``: the first matching request carrying ``page_token`` answers 400
      (``page_token_failures=N``: the next N such requests do).
    * ``loop_page_token``: pages requested with a ``page_token`` point ``metadata.next`` at the same token.
    * ``page_size_max``: pages hold at most this many rows whatever ``page_size`` asks (0: no such cap).
    * ``repeat_first_row``: every page of a listing ends with its first row again (a duplicate on one page).
    * ``page_overlap``: pages requested with a ``page_token`` start this many rows before it (< page size),
      so the rows at each page boundary come twice (as from a listing that shifted between requests).
    """

    rate_limit_burst: int = 0
    rate_limit_seconds: float = 1.0
    rate_limit_header: str = "retry-after"
    server_errors: int = 0
    server_error_status: int = 503
    slow_seconds: float = 0.0
    down: bool = False
    paths: tuple[str, ...] = ()
    fail_page_token_once: bool = False
    page_token_failures: int = 0
    loop_page_token: bool = False
    page_size_max: int = 0
    repeat_first_row: bool = False
    page_overlap: int = 0

    def __post_init__(self) -> None:
        if self.rate_limit_header not in RATE_LIMIT_HEADERS:
            raise ValueError(f"rate_limit_header must be one of {RATE_LIMIT_HEADERS}")
        if isinstance(self.paths, str):
            self.paths = (self.paths,)

    def applies_to(self, path: str) -> bool:
        return not self.paths or any(path.startswith(p) for p in self.paths)

    def take(self, path: str, params: dict[str, str]) -> ApiError | None:
        """The error this request answers with, consuming one count of its fault (caller holds the lock)."""
        if not self.applies_to(path):
            return None
        if self.down:
            return ApiError(503, "service unavailable")
        if self.rate_limit_burst > 0:
            self.rate_limit_burst -= 1
            headers: dict[str, str] = {}
            secs = self.rate_limit_seconds
            if self.rate_limit_header == "retry-after":
                headers["Retry-After"] = format(secs, "g")
            elif self.rate_limit_header == "retry-after-date":
                when = datetime.now(UTC) + timedelta(seconds=secs)
                headers["Retry-After"] = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
            elif self.rate_limit_header == "x-ratelimit-reset":
                headers["X-RateLimit-Reset"] = format(secs, "g")
            return ApiError(429, "Too many requests", headers)
        if self.server_errors > 0:
            self.server_errors -= 1
            return ApiError(self.server_error_status, "internal server error")
        if (self.fail_page_token_once or self.page_token_failures > 0) and "page_token" in params:
            if self.fail_page_token_once:
                self.fail_page_token_once = False
            else:
                self.page_token_failures -= 1
            return ApiError(400, "Invalid page token: the cursor has expired")
        return None
