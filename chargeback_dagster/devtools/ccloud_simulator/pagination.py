"""List pagination as the Confluent Cloud APIs do it: ``page_size`` capped per API, opaque ``page_token``
cursors bound to one listing (path + filters), ``metadata.first`` / ``next`` / ``total_size``."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlencode

from chargeback_dagster.devtools.ccloud_simulator.common import ApiError, json_text, stable_hash
from chargeback_dagster.devtools.ccloud_simulator.faults import Faults

# Published page_size maximum (requests above are capped) and the default when page_size is absent.
PAGE_SIZE_MAX = 100
DEFAULT_PAGE_SIZE = 10


def paginate(
    base_url: str,
    faults: Faults,
    path: str,
    params: dict[str, str],
    items: list,
    api_version: str,
    kind: str,
    *,
    page_max: int = PAGE_SIZE_MAX,
    page_default: int = DEFAULT_PAGE_SIZE,
    include_total: bool = True,
) -> dict:
    """The list response for the page of ``items`` that ``params`` ask for (links under ``base_url``)."""
    base = {k: v for k, v in params.items() if k not in ("page_token", "page_size")}
    listing = hashlib.sha256(json_text([path, sorted(base.items())]).encode()).hexdigest()[:12]
    try:
        size = int(params.get("page_size") or page_default)
    except ValueError:
        raise ApiError(400, "page_size must be an integer") from None
    if size < 1:
        raise ApiError(400, "page_size must be positive")
    faulty = faults.applies_to(path)
    size = min(size, page_max)
    if faulty and faults.page_size_max > 0:
        size = min(size, faults.page_size_max)
    offset = 0
    token = params.get("page_token")
    if token:
        offset = _decode_token(token, listing)
        if faulty and faults.page_overlap > 0:
            offset = max(offset - faults.page_overlap, 0)
    rows = items[offset : offset + size]
    if faulty and faults.repeat_first_row and rows:
        rows = [*rows, rows[0]]
    link_params = dict(base)
    if "page_size" in params:
        link_params["page_size"] = str(size)
    first = f"{base_url}{path}" + (f"?{urlencode(link_params)}" if link_params else "")
    metadata: dict[str, Any] = {"first": first}
    next_token: str | None = None
    if token and faults.loop_page_token and faulty:
        next_token = token
    elif offset + size < len(items):
        next_token = _encode_token(offset + size, listing)
    if next_token:
        metadata["next"] = f"{base_url}{path}?{urlencode({**link_params, 'page_token': next_token})}"
    if include_total:
        metadata["total_size"] = len(items)
    return {"api_version": api_version, "kind": kind, "metadata": metadata, "data": rows}


def _encode_token(offset: int, listing: str) -> str:
    raw = f"{offset}:{listing}:{stable_hash('token', offset, listing) % 10**8:08d}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, listing: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        offset_text, token_listing, _check = raw.split(":")
        offset = int(offset_text)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Invalid page token") from None
    if token_listing != listing or offset < 0:
        raise ApiError(400, "Invalid page token")
    return offset
