"""Confluent Cloud billing ingestion from the Costs API (docs/confluent-cloud.md §4).

* The run's dates ``[d_first, d_last]`` become ``[d_first, d_last + 1)``, split into consecutive windows of
  ``days_per_query`` days, fetched in ascending order, each fully paginated (``page_size`` 2000).
* Each cost object is mapped to a ``BillingLine``; numbers come from the JSON text as ``Decimal`` (the
  client parses with ``parse_float=Decimal``; JSON integers and numeric strings are accepted too).
* Malformed objects are kept as ``MALFORMED_BILLING_ROW`` lines (never dropped); rows dated outside their
  request window are ignored with a WARNING.
* A row ``id`` already seen in this fetch (a row returned twice, on one page or across pages) is counted
  once, with a WARNING naming it.
* Rows sharing (date, env_id, resource_id, product_category, product_type) are collapsed into one line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from chargeback_dagster.domain import BillingLine

ECOSYSTEM = "confluent_cloud"
COSTS_PATH = "/billing/v1/costs"
COSTS_PAGE_SIZE = 2000
MALFORMED = "MALFORMED_BILLING_ROW"
DAY = timedelta(days=1)
ZERO = Decimal(0)

__all__ = ["MALFORMED", "billing_windows", "collapse_tiers", "fetch_billing_lines", "map_cost_row"]


def billing_windows(dates: Iterable[date], days_per_query: int) -> list[tuple[date, date]]:
    """``[(start, end)]`` (end exclusive) covering ``[min(dates), max(dates) + 1)``; §4 windows."""
    ds = sorted(set(dates))
    if not ds:
        return []
    if days_per_query < 1:
        raise ValueError(f"days_per_query must be >= 1, got {days_per_query}")
    end = ds[-1] + DAY
    windows = []
    start = ds[0]
    while start < end:
        stop = min(start + days_per_query * DAY, end)
        windows.append((start, stop))
        start = stop
    return windows


class _Malformed(Exception):
    pass


def _number(item: dict, key: str) -> Decimal | None:
    """``item[key]`` as Decimal; None when absent/null; ``_Malformed`` when not parseable."""
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Malformed(f"{key} is not a number: {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):  # only when the client was not told to keep the JSON text
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise _Malformed(f"{key} is not a number: {value!r}") from None
    else:
        raise _Malformed(f"{key} is not a number: {value!r}")
    if not result.is_finite():
        raise _Malformed(f"{key} is not a finite number: {value!r}")
    return result


@lru_cache(maxsize=4096)
def _iso_day(text: str) -> date | None:
    # Every row of a day carries the same start_date text: parse each text once.
    try:
        return date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


def _date(value: Any) -> date:
    day = _iso_day(value) if type(value) is str else None
    if day is not None:
        return day
    if not isinstance(value, str):
        raise _Malformed(f"start_date missing or not a date: {value!r}")
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise _Malformed(f"start_date missing or not a date: {value!r}") from None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _env_id(item: dict) -> str:
    resource = item.get("resource")
    if isinstance(resource, dict):
        env = resource.get("environment")
        if isinstance(env, dict) and isinstance(env.get("id"), str) and env["id"]:
            return env["id"]
    env = item.get("environment")
    if isinstance(env, dict) and isinstance(env.get("id"), str):
        return env["id"]
    return ""


def _total(item: dict, logger: logging.Logger | logging.LoggerAdapter) -> tuple[Decimal, dict[str, Any]]:
    amount = _number(item, "amount")
    if amount is not None:
        return amount, {}
    original = _number(item, "original_amount")
    if original is not None:
        discount = _number(item, "discount_amount") or ZERO
        return original - discount, {"amount_derived": True}
    logger.warning(
        f"Billing row {item.get('id')!r} ({item.get('line_type')}) has neither amount nor original_amount; "
        "using 0"
    )
    return ZERO, {"amount_missing": True}


def map_cost_row(
    item: Any,
    window_start: date,
    tenant_id: str,
    logger: logging.Logger | logging.LoggerAdapter,
) -> BillingLine:
    """One Costs API object → one billing line (a ``MALFORMED_BILLING_ROW`` line when it is malformed)."""
    if type(item) is dict:
        line = _map_plain(item, tenant_id)
        if line is not None:
            return line
    return _map_general(item, window_start, tenant_id, logger)


# Cost object field -> metadata key, copied as text when present (docs/confluent-cloud.md §4).
_TEXT_METADATA = (
    ("id", "line_id"),
    ("unit", "unit"),
    ("network_access_type", "network_access_type"),
    ("description", "description"),
)


def _plain_factor(value: Any) -> Decimal | None:
    """A quantity or price as ``_number(...) or ZERO`` reads it (absent or zero → Decimal(0)); None when
    it is not a finite Decimal or an int (the general mapping handles it)."""
    if value is None:
        return ZERO
    if type(value) is Decimal:
        return (value or ZERO) if value.is_finite() else None
    if type(value) is int:
        return Decimal(value) or ZERO
    return None


def _map_plain(item: dict, tenant_id: str) -> BillingLine | None:
    """``map_cost_row`` for the usual object, with few calls per field: plain dicts, a parseable date,
    finite Decimal or int numbers and an ``amount``. None for anything else, which ``_map_general``
    handles; otherwise the same values (and ``str()`` of them) as ``_map_general`` builds."""
    get = item.get
    resource = get("resource")
    if resource is None:
        resource = {}
    elif type(resource) is not dict:
        return None
    environment = get("environment")
    if environment is not None and type(environment) is not dict:
        return None
    start = get("start_date")
    day = _iso_day(start) if type(start) is str else None
    if day is None:
        return None
    # Numbers as _number reads them; bool is neither Decimal nor int here, NaN/inf go the general way.
    total = get("amount")
    if type(total) is Decimal:
        if not total.is_finite():
            return None
    elif type(total) is int:
        total = Decimal(total)
    else:
        return None  # absent amount (derived or missing) or not a number
    quantity = _plain_factor(get("quantity"))
    price = _plain_factor(get("price"))
    if quantity is None or price is None:
        return None

    metadata: dict[str, Any] = {}
    value = resource.get("display_name")
    if isinstance(value, str):
        metadata["resource_name"] = value
    for key, name in _TEXT_METADATA:
        value = get(key)
        if value is not None:
            metadata[name] = value if type(value) is str else str(value)
    for key in ("original_amount", "discount_amount"):
        value = get(key)
        if value is not None:
            if type(value) is Decimal and value.is_finite():
                metadata[key] = str(value)
            elif type(value) is int:
                metadata[key] = str(Decimal(value))
            else:
                return None

    env = resource.get("environment")  # _env_id, inlined
    if isinstance(env, dict) and isinstance(env.get("id"), str) and env["id"]:
        env_id = env["id"]
    elif environment is not None and isinstance(environment.get("id"), str):
        env_id = environment["id"]
    else:
        env_id = ""
    resource_id = resource.get("id")
    product = get("product")
    line_type = get("line_type")
    return BillingLine(
        ECOSYSTEM,
        tenant_id,
        day,
        resource_id if isinstance(resource_id, str) else "",
        product if isinstance(product, str) else "",
        line_type if isinstance(line_type, str) else "",
        quantity,
        price,
        total,
        env_id,
        metadata=metadata,
    )


def _map_general(
    item: Any,
    window_start: date,
    tenant_id: str,
    logger: logging.Logger | logging.LoggerAdapter,
) -> BillingLine:
    try:
        if not isinstance(item, dict):
            raise _Malformed(f"row is not an object: {type(item).__name__}")
        for key in ("resource", "environment"):
            if item.get(key) is not None and not isinstance(item[key], dict):
                raise _Malformed(f"{key} is not an object: {item[key]!r}")
        day = _date(item.get("start_date"))
        quantity = _number(item, "quantity") or ZERO
        price = _number(item, "price") or ZERO
        total, flags = _total(item, logger)
        amounts = {key: _number(item, key) for key in ("original_amount", "discount_amount")}
    except _Malformed as exc:
        return _malformed_line(item, window_start, tenant_id, str(exc))

    resource = item.get("resource") or {}
    metadata: dict[str, Any] = {}
    if isinstance(resource.get("display_name"), str):
        metadata["resource_name"] = resource["display_name"]
    if item.get("id") is not None:
        metadata["line_id"] = str(item["id"])
    for key in ("unit", "network_access_type", "description"):
        if item.get(key) is not None:
            metadata[key] = str(item[key])
    metadata.update((key, str(value)) for key, value in amounts.items() if value is not None)
    metadata.update(flags)
    return BillingLine(
        ecosystem=ECOSYSTEM,
        tenant_id=tenant_id,
        date=day,
        resource_id=_text(resource.get("id")),
        product_category=_text(item.get("product")),
        product_type=_text(item.get("line_type")),
        quantity=quantity,
        unit_price=price,
        total_cost=total,
        env_id=_env_id(item),
        metadata=metadata,
    )


def _malformed_line(item: Any, window_start: date, tenant_id: str, error: str) -> BillingLine:
    obj = item if isinstance(item, dict) else {}
    try:
        day = _date(obj.get("start_date"))
    except _Malformed:
        day = window_start
    amount = ZERO
    for key in ("amount", "original_amount"):
        try:
            value = _number(obj, key)
        except _Malformed:
            continue
        if value is not None:
            amount = value if key == "amount" else value - _safe_number(obj, "discount_amount")
            break
    try:
        env_id = _env_id(obj)
    except Exception:  # noqa: BLE001 - a malformed row must never fail the gather
        env_id = ""
    product = obj.get("product")
    metadata: dict[str, Any] = {
        "malformed": True,
        "parse_error": error,
        "raw_line_type": str(obj.get("line_type")) if obj.get("line_type") is not None else None,
    }
    if obj.get("id") is not None:
        metadata["line_id"] = str(obj["id"])
    return BillingLine(
        ecosystem=ECOSYSTEM,
        tenant_id=tenant_id,
        date=day,
        resource_id="",
        product_category=product if isinstance(product, str) and product else "MALFORMED",
        product_type=MALFORMED,
        quantity=_safe_number(obj, "quantity"),
        unit_price=ZERO,
        total_cost=amount,
        env_id=env_id,
        metadata=metadata,
    )


def _safe_number(obj: dict, key: str) -> Decimal:
    try:
        return _number(obj, key) or ZERO
    except _Malformed:
        return ZERO


def _tier(line: BillingLine) -> dict[str, str]:
    md = line.metadata
    return {
        "line_id": str(md.get("line_id", "")),
        "price": str(line.unit_price),
        "quantity": str(line.quantity),
        "amount": str(line.total_cost),
        "network_access_type": str(md.get("network_access_type", "")),
    }


def collapse_tiers(lines: Iterable[BillingLine]) -> list[BillingLine]:
    """Rows with one key (date, env_id, resource_id, product_category, product_type) → one line.

    quantity and total_cost are summed, unit_price is 0 and ``metadata.tiers`` lists the rows (strings,
    sorted by line_id). A single row passes unchanged. Output keeps first-seen key order.
    """
    # Most keys have one row: keep that line, and a list only for keys seen again.
    firsts: dict[tuple, BillingLine] = {}
    more: dict[tuple, list[BillingLine]] = {}
    for line in lines:
        key = (line.date, line.env_id, line.resource_id, line.product_category, line.product_type)
        first = firsts.get(key)
        if first is None:
            firsts[key] = line
        else:
            more.setdefault(key, [first]).append(line)
    if not more:
        return list(firsts.values())
    out: list[BillingLine] = []
    for key, line in firsts.items():
        rows = more.get(key)
        if rows is None:
            out.append(line)
            continue
        rows = sorted(rows, key=lambda ln: str(ln.metadata.get("line_id", "")))
        first = rows[0]
        metadata: dict[str, Any] = {
            k: v
            for k, v in first.metadata.items()
            if k in ("resource_name", "unit", "description", "raw_line_type")
        }
        for flag in ("amount_derived", "amount_missing", "malformed"):
            if any(r.metadata.get(flag) for r in rows):
                metadata[flag] = True
        errors = [r.metadata["parse_error"] for r in rows if r.metadata.get("parse_error")]
        if errors:
            metadata["parse_error"] = "; ".join(errors)
        metadata["tiers"] = [_tier(r) for r in rows]
        out.append(
            BillingLine(
                ecosystem=first.ecosystem,
                tenant_id=first.tenant_id,
                date=first.date,
                resource_id=first.resource_id,
                product_category=first.product_category,
                product_type=first.product_type,
                quantity=sum((r.quantity for r in rows), ZERO),
                unit_price=ZERO,
                total_cost=sum((r.total_cost for r in rows), ZERO),
                env_id=first.env_id,
                metadata=metadata,
            )
        )
    return out


def fetch_billing_lines(
    client: Any,
    dates: list[date],
    days_per_query: int,
    tenant_id: str,
    logger: logging.Logger | logging.LoggerAdapter,
) -> list[BillingLine]:
    """Every line of ``dates`` from the Costs API, collapsed; raises on any failed request."""
    if not dates:
        return []
    first, last = min(dates), max(dates)
    mapped: list[BillingLine] = []
    seen: set[str] = set()  # row ids: a row the API returns again is not a second price tier
    for start, end in billing_windows(dates, days_per_query):
        items = client.list_all(
            COSTS_PATH,
            {"start_date": start.isoformat(), "end_date": end.isoformat()},
            page_size=COSTS_PAGE_SIZE,
        )
        keep_from, keep_to = max(start, first), min(end, last + DAY)
        for item in items:
            row_id = item.get("id") if type(item) is dict else None
            if row_id is not None:
                row_id = str(row_id)
                if row_id in seen:
                    logger.warning(
                        f"Billing row {row_id} returned more than once by the Costs API; counted once"
                    )
                    continue
                seen.add(row_id)
            line = _map_plain(item, tenant_id) if type(item) is dict else None
            if line is None:
                line = _map_general(item, start, tenant_id, logger)
            if keep_from <= line.date < keep_to:
                mapped.append(line)
                continue
            if not (start <= line.date < end):
                logger.warning(
                    f"Ignoring billing row {line.metadata.get('line_id', '?')} dated {line.date} outside its "
                    f"request window [{start}, {end})"
                )
    return collapse_tiers(mapped)
