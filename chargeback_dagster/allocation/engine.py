"""The allocation engine: a date's billing lines → merged chargeback amounts (docs/allocation.md §2, §6, §12).

`allocate_date` is pure apart from `record_failure` (the caller's committed increment of a line's
`allocation_attempts`) and logging. The caller persists `DateAllocation.blocks` and resets the counters of
`succeeded_lines`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from chargeback_dagster.allocation.credits import DEFAULT_CREDIT_POLICY, check_credit_policy, credit_blocks
from chargeback_dagster.allocation.models import Block, Model
from chargeback_dagster.allocation.types import (
    AllocationContext,
    Allocator,
    DateInputs,
    Handler,
    IdentitySets,
    Resolution,
)
from chargeback_dagster.domain import (
    DIMENSION_KEY_FIELDS,
    OWNER_TYPES,
    UNALLOCATED,
    BillingLine,
    BlockKey,
    ChargebackRow,
    MetricRow,
    day_start,
    row_key,
)
from chargeback_dagster.money import UNIT, format_units, round4_units, scaled_round4_units

_LOG = logging.getLogger("chargeback_dagster.allocation")
_EMPTY: Mapping[str, Any] = MappingProxyType({})

DAY = timedelta(days=1)
_MICROSECOND = timedelta(microseconds=1)
DAY_MICROSECONDS = DAY // _MICROSECOND

COST_TYPES = frozenset({"usage", "shared"})
INACTIVE_DETAIL = "resource_inactive_fraction"
METRICS_FAILED_DETAIL = "metrics_fetch_failed"
FAILED_METHOD = "ALLOCATION_FAILED"

# Field names of a chargeback row key (decision D2 dimension key minus ecosystem and tenant_id).
ROW_KEY_FIELDS = DIMENSION_KEY_FIELDS
RowKey = tuple[str, ...]

# fn(tenant_id, resource_id, billing_timestamp, billing_duration, metrics_data, store)
#   -> Resolution | (resource_active, metrics_derived, context)
ResolverOverride = Callable[..., Any]


class DateCalculationError(Exception):
    """A date cannot be calculated this run (a line failed below `allocation_retry_limit`)."""

    def __init__(self, day: date, error: str) -> None:
        super().__init__(f"Calculate failed for date {day}: {error}")
        self.date = day
        self.error = error


@dataclass(slots=True)
class DateAllocation:
    date: date
    # The date's merged rows: block key -> identity_id -> summed amount in units. Nested rather than keyed
    # by the 9-field dimension key: a block's rows go in with one C-level dict build (see _merge_line).
    blocks: dict[BlockKey, dict[str, int]]
    succeeded_lines: list[BillingLine]  # allocated normally: reset their allocation_attempts
    billed_units: int  # Σ T over the date's lines
    line_count: int
    # Lines that got the ALLOCATION_FAILED fallback row: (line, attempts n, error text)
    failed_lines: list[tuple[BillingLine, int, str]] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return sum(map(len, self.blocks.values()))

    @property
    def allocated_units(self) -> int:
        return sum(sum(per_identity.values()) for per_identity in self.blocks.values())

    @property
    def rows(self) -> dict[RowKey, int]:
        """The rows keyed by the full dimension key (ROW_KEY_FIELDS), for tests and tools."""
        return {
            row_key(block_key, identity_id): units
            for block_key, per_identity in self.blocks.items()
            for identity_id, units in per_identity.items()
        }

    def row_dicts(self) -> list[dict[str, Any]]:
        """Rows as dicts (`ROW_KEY_FIELDS` + `amount_units`), for tests and debugging."""
        return [dict(zip(ROW_KEY_FIELDS, key, strict=True), amount_units=u) for key, u in self.rows.items()]


_LINE_ORDER = attrgetter("resource_id", "product_type", "env_id")  # docs/allocation.md §2


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _claims(handlers: Sequence[Handler]) -> dict[str, Handler]:
    by_type: dict[str, Handler] = {}
    for handler in handlers:
        for product_type in handler.allocators:
            other = by_type.get(product_type)
            if other is not None and other is not handler:
                raise ValueError(
                    f"product_type '{product_type}' is claimed by handlers "
                    f"'{other.service_type}' and '{handler.service_type}'"
                )
            by_type[product_type] = handler
    return by_type


def _sorted_ids(ids: Any, excluded: frozenset[str]) -> tuple[str, ...]:
    if not ids:
        return ()
    return tuple(sorted(set(ids).difference(excluded)))


def _unpack_resolution(result: Any) -> tuple[Any, Any, dict[str, Any]]:
    if isinstance(result, Resolution):
        return result.resource_active, result.metrics_derived, result.context or {}
    if isinstance(result, tuple | list) and len(result) == 3:
        resource_active, metrics_derived, context = result
        return resource_active, metrics_derived, dict(context or {})
    raise TypeError(
        "Identity resolver must return a Resolution or (resource_active, metrics_derived, context), "
        f"got {type(result).__name__}"
    )


def _override_blocks(product_type: str, rows: Any) -> list[Block]:
    """Validate an override allocator's rows and turn them into blocks."""
    if not isinstance(rows, list | tuple):
        raise TypeError(
            f"Allocator for '{product_type}' must return a list of rows, got {type(rows).__name__}"
        )
    blocks: list[Block] = []
    for row in rows:
        if not isinstance(row, ChargebackRow):
            raise TypeError(
                f"Allocator for '{product_type}' returned a {type(row).__name__}, not a ChargebackRow"
            )
        amount = row.amount_units
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(
                f"Allocator for '{product_type}' returned a non-integer amount_units {amount!r} "
                f"for '{row.identity_id}'"
            )
        if not row.identity_id or not row.allocation_method or not row.allocation_detail:
            raise ValueError(
                f"Allocator for '{product_type}' returned a row with an empty identity_id, "
                "allocation_method or allocation_detail"
            )
        if row.cost_type not in COST_TYPES:
            raise ValueError(f"Allocator for '{product_type}' returned unknown cost_type '{row.cost_type}'")
        blocks.append(
            (
                (row.identity_id,),
                (amount,),
                row.cost_type,
                row.allocation_method,
                row.allocation_detail,
                row.composition_part or "",
            )
        )
    return blocks


def _unknown_target(allocator: Allocator, line: BillingLine) -> str:
    target_for = getattr(allocator, "target_for", None)
    target = target_for(line) if callable(target_for) else None
    return target or "the unknown-type allocator"


class _DateAllocator:
    """Per-date state: identity caches, routing tables; `line_blocks` allocates one line."""

    def __init__(
        self,
        inputs: DateInputs,
        tenant_id: str,
        ecosystem: str,
        handlers: Sequence[Handler],
        unknown_allocator: Allocator,
        params: Mapping[str, Any],
        allocator_overrides: Mapping[str, Allocator],
        resolver_overrides: Mapping[str, ResolverOverride],
        logger: Any,
        warned: set[str],
    ) -> None:
        self.inputs = inputs
        self.tenant_id = tenant_id
        self.ecosystem = ecosystem
        self.by_type = _claims(handlers)
        self.unknown_allocator = unknown_allocator
        self.params = params
        self.allocator_overrides = allocator_overrides
        self.resolver_overrides = resolver_overrides
        self.log = logger
        self.warned = warned
        self.day = inputs.date
        self.day_start = day_start(inputs.date)
        self.day_end = self.day_start + DAY

        system = {UNALLOCATED}
        period: set[str] = set()
        owners: set[str] = set()
        for identity in inputs.identities.values():
            if identity.identity_type == "system":
                system.add(identity.identity_id)
            elif identity.existed_between(self.day_start, self.day_end):
                period.add(identity.identity_id)
                if identity.identity_type in OWNER_TYPES:
                    owners.add(identity.identity_id)
        self.excluded = frozenset(system)
        self.tenant_period = tuple(sorted(period - self.excluded))
        self.tenant_period_owners = tuple(sorted(owners - self.excluded))
        self.no_identities = IdentitySets(
            tenant_period=self.tenant_period, tenant_period_owners=self.tenant_period_owners
        )
        self._sets_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], IdentitySets] = {}
        self._routes: dict[str, tuple[Handler | None, Allocator, bool]] = {}
        self.resources = inputs.resources

    # -- identity sets (docs/allocation.md §3) -------------------------------------------------------------
    def identity_sets(self, resource_active: Any, metrics_derived: Any) -> IdentitySets:
        key = (tuple(resource_active or ()), tuple(metrics_derived or ()))
        sets = self._sets_cache.get(key)
        if sets is None:
            active = _sorted_ids(key[0], self.excluded)
            derived = _sorted_ids(key[1], self.excluded)
            if not derived:
                merged = active
            elif not active:
                merged = derived
            else:
                merged = tuple(sorted(set(active).union(derived)))
            sets = IdentitySets(
                resource_active=active,
                metrics_derived=derived,
                merged_active=merged,
                tenant_period=self.tenant_period,
                tenant_period_owners=self.tenant_period_owners,
            )
            self._sets_cache[key] = sets
        return sets

    # -- active fraction (docs/allocation.md §2 step 2) -----------------------------------------------------
    def active_microseconds(self, line: BillingLine, handler: Handler) -> int:
        resource = self.inputs.resources.get(line.resource_id)
        if resource is None or resource.resource_type not in handler.billing_resource_types:
            return DAY_MICROSECONDS
        if resource.created_at is None and resource.deleted_at is None:
            return DAY_MICROSECONDS
        start = (
            self.day_start if resource.created_at is None else max(_utc(resource.created_at), self.day_start)
        )
        end = self.day_end if resource.deleted_at is None else min(_utc(resource.deleted_at), self.day_end)
        if end <= start:
            return 0
        return (end - start) // _MICROSECOND

    # -- routing (docs/allocation.md §2 step 1) ----------------------------------------------------------
    def route(self, line: BillingLine) -> tuple[Handler | None, Allocator, bool]:
        """(claiming handler, allocator, allocator is a built-in Model) of the line's product type."""
        product_type = line.product_type
        route = self._routes.get(product_type)
        if route is None:
            handler = self.by_type.get(product_type)
            allocator = self.allocator_overrides.get(product_type)
            if allocator is None:
                if handler is not None:
                    allocator = handler.allocators[product_type]
                else:
                    allocator = self.unknown_allocator
                    if product_type not in self.warned:
                        self.warned.add(product_type)
                        self.log.warning(
                            f"No allocator for product_type '{product_type}'; charged to "
                            f"{_unknown_target(allocator, line)}"
                        )
            route = self._routes[product_type] = (handler, allocator, isinstance(allocator, Model))
        return route

    # -- one line ---------------------------------------------------------------------------------------
    def line_blocks(self, line: BillingLine, t_units: int) -> list[Block]:
        handler, allocator, is_model = self.route(line)

        inactive: Block | None = None
        a_units = t_units
        if handler is not None:
            resource = self.resources.get(line.resource_id)
            if resource is not None and (resource.created_at is not None or resource.deleted_at is not None):
                active_us = self.active_microseconds(line, handler)
                if active_us < DAY_MICROSECONDS:
                    a_units = scaled_round4_units(line.total_cost, active_us, DAY_MICROSECONDS)
                    r_units = t_units - a_units
                    if r_units:
                        inactive = ((UNALLOCATED,), (r_units,), "shared", "terminal", INACTIVE_DETAIL, "")
                    if active_us == 0:
                        return [inactive] if inactive else []

        metrics_failed = False
        context: dict[str, Any]
        line_metrics: Mapping[str, list[MetricRow]]
        if handler is None:
            line_metrics = {}
            context = {}
            sets = self.no_identities
        else:
            queries = handler.metric_queries(line)
            if queries:
                resource_id = line.resource_id
                metrics = self.inputs.metrics
                failed = self.inputs.failed_metrics
                line_metrics = {key: metrics.get((resource_id, key), []) for key in queries}
                if failed:
                    metrics_failed = any((resource_id, key) in failed for key in queries)
            else:
                line_metrics = {}
            override = self.resolver_overrides.get(handler.service_type) if self.resolver_overrides else None
            if override is not None:
                result = override(
                    self.tenant_id, line.resource_id, line.timestamp, DAY, line_metrics, self.inputs
                )
            else:
                result = handler.resolve(line, self.inputs, line_metrics)
            if type(result) is Resolution:
                resource_active = result.resource_active
                metrics_derived = result.metrics_derived
                context = result.context or {}
            else:
                resource_active, metrics_derived, context = _unpack_resolution(result)
            sets = self._sets_cache.get(
                (
                    tuple(resource_active) if resource_active else (),
                    tuple(metrics_derived) if metrics_derived else (),
                )
            ) or self.identity_sets(resource_active, metrics_derived)

        ctx = AllocationContext(
            self.tenant_id,
            self.ecosystem,
            self.day,
            line,
            UNIT * a_units,  # units_to_decimal(a_units), faster
            sets,
            line_metrics,
            metrics_failed,
            self.params,
            context,
        )
        if is_model:
            allocated = allocator.blocks(ctx, a_units, "")  # type: ignore[attr-defined]
        else:
            allocated = _override_blocks(line.product_type, allocator(ctx))

        total = 0
        for block in allocated:
            ids, amounts = block[0], block[1]
            if len(amounts) != len(ids):
                raise ValueError(
                    f"Allocator for '{line.product_type}' returned a block with {len(ids)} "
                    f"identities and {len(amounts)} amounts"
                )
            total += sum(amounts)
        if total != a_units:
            raise ValueError(
                f"Allocator for '{line.product_type}' returned rows summing to {format_units(total)}, "
                f"expected {format_units(a_units)}"
            )
        if metrics_failed:  # decision D9
            allocated = [
                (ids, am, ct, method, METRICS_FAILED_DETAIL, part)
                for ids, am, ct, method, _, part in allocated
            ]
        if inactive:
            return [inactive, *allocated]
        return allocated


def _merge_line(
    blocks_by_key: dict[BlockKey, dict[str, int]], line: BillingLine, blocks: list[Block]
) -> None:
    """Add a line's rows to the date's rows, summing rows with the same dimension key (decision D2).

    A block key seen for the first time takes its rows with one C-level dict build; a repeated block key
    (or an identity repeated inside a block) is summed identity by identity. Lines are merged as they are
    allocated: deferring it would keep every line's blocks alive and cost the cyclic garbage collector a
    full pass over them.
    """
    head = (line.env_id, line.resource_id, line.product_category, line.product_type)
    for ids, amounts, cost_type, method, detail, part in blocks:
        block_key = (*head, cost_type, method, detail, part)
        per_identity = blocks_by_key.get(block_key)
        if per_identity is None:
            per_identity = dict(zip(ids, amounts, strict=True))
            if len(per_identity) == len(ids):
                blocks_by_key[block_key] = per_identity
                continue
            per_identity = blocks_by_key[block_key] = {}  # an identity repeated inside the block
        get = per_identity.get
        for identity_id, amount in zip(ids, amounts, strict=True):
            per_identity[identity_id] = get(identity_id, 0) + amount


def allocate_date(
    inputs: DateInputs,
    *,
    tenant_id: str,
    ecosystem: str,
    handlers: Sequence[Handler],
    unknown_allocator: Allocator,
    params: Mapping[str, Any],
    allocator_overrides: Mapping[str, Allocator] = _EMPTY,
    resolver_overrides: Mapping[str, ResolverOverride] = _EMPTY,
    retry_limit: int,
    record_failure: Callable[[BillingLine], int],
    logger: Any = None,
    warned: set[str] | None = None,
    credit_policy: str = DEFAULT_CREDIT_POLICY,
) -> DateAllocation:
    """Allocate every billing line of `inputs.date` (docs/allocation.md §2) with the failure rules of §6.

    * `record_failure(line)` increments and commits the line's `allocation_attempts`, returning the new
      count `n`. `n < retry_limit` → `DateCalculationError` (the date fails); otherwise the line gets one
      `ALLOCATION_FAILED` row for `UNALLOCATED` and the date continues.
    * `warned` collects product types already warned about as unknown; pass one set per run to warn once
      per run (default: once per call).
    * `resolver_overrides` (service_type → fn) are called positionally as
      `fn(tenant_id, resource_id, billing_timestamp, billing_duration, metrics_data, store)`.
    * Lines with `T < 0` (credits; an `allocator_overrides` entry for their product type excepted) are
      allocated after all others by `credit_policy`, a `CreditPolicy` name (docs/allocation.md §12).
    """
    policy = check_credit_policy(credit_policy)
    engine = _DateAllocator(
        inputs,
        tenant_id,
        ecosystem,
        handlers,
        unknown_allocator,
        params,
        allocator_overrides,
        resolver_overrides,
        logger if logger is not None else _LOG,
        set() if warned is None else warned,
    )
    day = inputs.date
    succeeded: list[BillingLine] = []
    failed_lines: list[tuple[BillingLine, int, str]] = []
    billed = 0
    merged: dict[BlockKey, dict[str, int]] = {}
    credits: list[tuple[BillingLine, int]] = []

    for line in sorted(inputs.lines, key=_LINE_ORDER):
        try:
            t_units = round4_units(line.total_cost)
        except (ValueError, ArithmeticError) as exc:
            raise DateCalculationError(
                day, f"Invalid total_cost {line.total_cost!r} for {line.resource_id}/{line.product_type}"
            ) from exc
        billed += t_units
        if t_units < 0 and line.product_type not in engine.allocator_overrides:
            credits.append((line, t_units))  # needs the other lines' rows: allocated below
            continue
        try:
            blocks = engine.line_blocks(line, t_units)
        except Exception as exc:
            error = _error_text(exc)
            try:
                attempts = record_failure(line)
            except Exception as record_exc:
                engine.log.error(
                    f"Could not record allocation failure of {line.resource_id}/{line.product_type} "
                    f"on {day}: {_error_text(record_exc)}"
                )
                raise DateCalculationError(day, error) from exc
            if attempts < retry_limit:
                raise DateCalculationError(day, error) from exc
            engine.log.warning(
                f"Allocation of {line.resource_id}/{line.product_type} on {day} failed {attempts} times; "
                f"charged to {UNALLOCATED}: {error}"
            )
            failed_lines.append((line, attempts, error))
            blocks = [
                (
                    (UNALLOCATED,),
                    (t_units,),
                    "shared",
                    FAILED_METHOD,
                    f"Failed after {attempts} attempts: {error[:200]}",
                    "",
                )
            ]
        else:
            succeeded.append(line)
        _merge_line(merged, line, blocks)
    if credits:  # rare: most dates have none
        for line, blocks in credit_blocks(
            credits, merged, policy=policy, excluded=engine.excluded, day=day, log=engine.log
        ):
            _merge_line(merged, line, blocks)
            succeeded.append(line)
    allocated = sum(sum(per_identity.values()) for per_identity in merged.values())
    if allocated != billed:  # decision D1; cannot happen unless a model is broken
        raise DateCalculationError(
            day, f"chargeback rows sum to {format_units(allocated)}, billed {format_units(billed)}"
        )
    return DateAllocation(
        date=day,
        blocks=merged,
        succeeded_lines=succeeded,
        billed_units=billed,
        line_count=len(inputs.lines),
        failed_lines=failed_lines,
    )
