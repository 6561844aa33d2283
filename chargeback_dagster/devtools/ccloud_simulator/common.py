"""Shared by the simulator's modules: deterministic ids and hashes, timestamps, exact JSON, API errors."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DAY = timedelta(days=1)


def stable_hash(*parts: object) -> int:
    """Deterministic 64-bit hash of the parts (independent of PYTHONHASHSEED)."""
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def ident(seed: int, kind: str, index: object, length: int, alphabet: str = ALNUM) -> str:
    text = "|".join(str(p) for p in (seed, "id", kind, index)).encode()
    n = int.from_bytes(hashlib.blake2b(text, digest_size=32).digest(), "big")
    chars = []
    for _ in range(length):
        n, r = divmod(n, len(alphabet))
        chars.append(alphabet[r])
    return "".join(chars)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def json_text(obj: Any) -> str:
    """JSON with ``Decimal`` written as an exact number (plain notation, never a float round-trip)."""
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{json_text(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(json_text(v) for v in obj) + "]"
    return json.dumps(obj)


class ApiError(Exception):
    """An API error answer: HTTP status, detail text and extra headers (e.g. Retry-After)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def error_body(status: int, detail: str) -> dict:
    return {"errors": [{"status": str(status), "detail": detail}]}
