"""HTTP requests with a total time limit.

httpx's timeouts bound each socket operation, so a server that trickles its answer (a few bytes every
second) keeps a request alive indefinitely. `send` bounds the whole request — connect, send, headers and the
complete body — by a total limit and, when the caller has one, by the run's deadline: every socket operation
is capped at the time left when the request starts, and the body is read in chunks with the clock checked
after each chunk. (A server that goes silent part-way is ended by that capped read timeout.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

__all__ = ["send"]


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
