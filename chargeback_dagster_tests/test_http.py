"""The one Retry-After / X-RateLimit-Reset parser of sources/http.py (docs/confluent-cloud.md §2,
docs/generic-metrics.md §1)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chargeback_dagster.sources.http import retry_after

NOW = datetime(2026, 2, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "Sun, 01 Feb 2026 12:01:30 GMT"}, 90.0),  # an HTTP date: seconds from now
        ({"Retry-After": "Sun, 01 Feb 2026 11:59:00 GMT"}, 0.0),  # already past
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
        ({"X-RateLimit-Reset": "12"}, None),  # only read when asked for
    ],
)
def test_retry_after(headers, expected):
    assert retry_after(headers, NOW) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-RateLimit-Reset": "12"}, 12.0),  # relative seconds, never an epoch time
        ({"X-RateLimit-Reset": "1769947200"}, 1769947200.0),  # the caller's cap bounds such a value
        ({"Retry-After": "4", "X-RateLimit-Reset": "12"}, 4.0),  # Retry-After first
        ({"Retry-After": "soon", "X-RateLimit-Reset": "12"}, 12.0),  # an unreadable Retry-After is skipped
        ({"X-RateLimit-Reset": "nan"}, None),
        ({"X-RateLimit-Reset": "-1"}, 0.0),
    ],
)
def test_retry_after_with_rate_limit_reset(headers, expected):
    assert retry_after(headers, NOW, rate_limit_reset=True) == expected
