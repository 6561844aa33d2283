"""Allocation models (docs/allocation.md §4): EvenSplit, UsageRatio, Terminal, Chain, Composition.

Every model is a callable `Allocator` (`ctx -> list[ChargebackRow]`, allocating `ctx.amount`). For speed
the engine uses the models' internal `blocks(ctx, units, part)` form instead: a list of
`(identity_ids, amounts_in_units, cost_type, method, detail, composition_part)` tuples, so a 30-way
split costs one tuple rather than 30 row objects. An empty list means "this tier yields nothing".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from operator import attrgetter, is_
from typing import Any

from chargeback_dagster.allocation.types import AllocationContext, Allocator, IdentitySets
from chargeback_dagster.domain import UNALLOCATED, ChargebackRow, MetricRow
from chargeback_dagster.money import (
    apportion_float,
    apportion_units,
    decimal_weights_to_ints,
    div_round_half_up,
    even_split_units,
    float_weights,
    to_units,
    units_to_decimal,
)

# (identity_ids, amounts (units), cost_type, allocation_method, allocation_detail, composition_part)
Block = tuple[Sequence[str], Sequence[int], str, str, str, str]

IDENTITY_SET_NAMES = frozenset(f.name for f in dataclasses.fields(IdentitySets))
COMPOSITION_RATIO_TOLERANCE = Decimal("0.0001")
_EXACT_TYPES = frozenset({Decimal, int})


def blocks_to_rows(blocks: Iterable[Block]) -> list[ChargebackRow]:
    return [
        ChargebackRow(identity_id, cost_type, amount, method, detail, part)
        for ids, amounts, cost_type, method, detail, part in blocks
        for identity_id, amount in zip(ids, amounts, strict=True)
    ]


class Model:
    """Base of the built-in models: `blocks()` is the fast form, `__call__` the `Allocator` protocol."""

    __slots__ = ()

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list[Block]:
        raise NotImplementedError

    def __call__(self, ctx: AllocationContext) -> list[ChargebackRow]:
        return blocks_to_rows(self.blocks(ctx, to_units(ctx.amount), ""))


class EvenSplit(Model):
    """Equal split over an identity set; an empty set yields nothing."""

    __slots__ = ("identity_set", "cost_type", "detail", "method", "_getter")

    def __init__(
        self,
        identity_set: str | Callable[[AllocationContext], Sequence[str]],
        cost_type: str,
        detail: str,
        method: str = "even_split",
    ) -> None:
        if isinstance(identity_set, str):
            if identity_set not in IDENTITY_SET_NAMES:
                raise ValueError(
                    f"Unknown identity set '{identity_set}'; expected one of {sorted(IDENTITY_SET_NAMES)}"
                )
            self._getter: Callable[[AllocationContext], Sequence[str]] = attrgetter(
                f"identities.{identity_set}"
            )
        elif callable(identity_set):
            # A callable's result is de-duplicated and sorted here (decision D4).
            self._getter = lambda ctx: sorted(set(identity_set(ctx)))
        else:
            raise TypeError(
                f"identity_set must be a set name or a callable, got {type(identity_set).__name__}"
            )
        self.identity_set = identity_set
        self.cost_type = cost_type
        self.detail = detail
        self.method = method

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list[Block]:
        ids = self._getter(ctx)
        if not ids:
            return []
        return [(ids, even_split_units(units, len(ids)), self.cost_type, self.method, self.detail, part)]

    def __repr__(self) -> str:
        return (
            f"EvenSplit({self.identity_set!r}, {self.cost_type!r}, {self.detail!r}, method={self.method!r})"
        )


class UsageRatio(Model):
    """Split by usage weights `ctx.context["usage"][weight_name]` (identity → Decimal).

    `weight_name` may also be a sequence of names whose weights are summed per identity (CKU: bytes_in +
    bytes_out). Weights ≤ 0 are dropped; identities are sorted by id (decision D4). Yields nothing when
    the line's metrics failed (decision D9) or no positive weight is left. Rows are cost_type `usage`.

    Converting the Decimal weights (to floats for the fast split, to integers for the exact one) is the
    expensive part, and the lines of one resource may share their weight mappings, so the prepared
    `_Weights` are cached per weight-mapping object. A cache entry holds the mapping (its `id` cannot be
    reused while cached) and a shallow copy, and is used only while the mapping still equals that copy,
    so a mutated mapping is prepared again.
    """

    __slots__ = ("weight_names", "detail", "cost_type", "method", "_cache")

    def __init__(self, weight_name: str | Sequence[str], detail: str = "usage_ratio_allocation") -> None:
        names = (weight_name,) if isinstance(weight_name, str) else tuple(weight_name)
        if not names:
            raise ValueError("UsageRatio requires at least one weight name")
        self.weight_names = names
        self.detail = detail
        self.cost_type = "usage"
        self.method = "usage_ratio"
        # id(mapping) or tuple of ids -> (mappings, shallow copies, prepared weights or None)
        self._cache: dict[Any, tuple[Any, Any, _Weights | None]] = {}

    def weights(self, ctx: AllocationContext) -> Mapping[str, Any]:
        """identity → weight as given by the resolver (several weight names are summed)."""
        usage = (ctx.context or {}).get("usage") or {}
        if len(self.weight_names) == 1:
            return usage.get(self.weight_names[0]) or {}
        return _summed([usage.get(name) for name in self.weight_names])

    def prepared(self, ctx: AllocationContext) -> _Weights | None:
        """The positive weights in identity order, or None."""
        context = ctx.context
        usage = context.get("usage") if context else None
        if not usage:
            return None
        names = self.weight_names
        cache = self._cache
        if len(names) == 1:
            source = usage.get(names[0])
            if not source:
                return None
            if type(source) is not dict:
                return _prepare(source)
            hit = cache.get(id(source))
            if hit is not None and hit[0] is source and _unchanged(hit[1], source):
                return hit[2]
            result = _prepare(source)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[id(source)] = (source, source.copy(), result)
            return result
        sources = [usage.get(name) for name in names]
        if not all(type(src) is dict for src in sources):
            return _prepare(_summed(sources))
        key = tuple(map(id, sources))
        hit = cache.get(key)
        if hit is not None and all(map(is_, hit[0], sources)) and all(map(_unchanged, hit[1], sources)):
            return hit[2]
        result = _prepare(_summed(sources))
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[key] = (sources, [src.copy() for src in sources], result)
        return result

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list[Block]:
        if ctx.metrics_fetch_failed:
            return []
        prepared = self.prepared(ctx)
        if prepared is None:
            return []
        return [(prepared.ids, prepared.split(units), self.cost_type, self.method, self.detail, part)]

    def __repr__(self) -> str:
        name = self.weight_names[0] if len(self.weight_names) == 1 else self.weight_names
        return f"UsageRatio({name!r}, {self.detail!r})"


class _Weights:
    """Positive usage weights (Decimal or int) in identity order, ready to split an amount.

    A split is tried with floats first (`apportion_float`, which proves its result or gives up) and
    done with the exact integer weights otherwise; those are scaled only when first needed.
    """

    __slots__ = ("ids", "values", "floats", "float_sum", "_ints", "_int_sum")

    def __init__(
        self,
        ids: tuple[str, ...],
        values: Sequence[Decimal | int],
        as_floats: tuple[list[float], float] | None,
    ) -> None:
        self.ids = ids
        self.values = values
        self.floats, self.float_sum = as_floats if as_floats is not None else (None, 0.0)
        self._ints: list[int] | None = None
        self._int_sum = 0

    def split(self, units: int) -> list[int]:
        """`units` split by the weights (docs/allocation.md §1), one amount per identity."""
        if self.floats is not None:
            shares = apportion_float(units, self.floats, self.float_sum)
            if shares is not None:
                return shares
        if self._ints is None:
            self._ints = decimal_weights_to_ints(self.values)
            self._int_sum = sum(self._ints)
        return apportion_units(units, self._ints, self._int_sum)


_CACHE_SIZE = 8
_DECIMAL_ONLY = {Decimal}
_DECIMAL_ZERO = Decimal(0)


def _unchanged(copy: dict[str, Any], source: dict[str, Any]) -> bool:
    """`source` still equals its cached copy (fast: unchanged values are the same objects)."""
    try:
        return copy == source
    except ArithmeticError:  # a signaling NaN put in since
        return False


def _summed(sources: Sequence[Mapping[str, Any] | None]) -> dict[str, Decimal]:
    total: dict[str, Decimal] = {}
    get = total.get
    for source in sources:
        if not source:
            continue
        if set(map(type, source.values())) == _DECIMAL_ONLY:  # skip _as_decimal: same sums
            for identity_id, w in source.items():
                total[identity_id] = get(identity_id, _DECIMAL_ZERO) + w
        else:
            for identity_id, w in source.items():
                total[identity_id] = get(identity_id, _DECIMAL_ZERO) + _as_decimal(w)
    return total


def _prepare(weights: Mapping[str, Any]) -> _Weights | None:
    """Positive weights sorted by identity (decision D4); None when there is none."""
    ids: Sequence[str]
    values: Sequence[Any]
    try:
        ids = sorted(weights)
        values = list(map(weights.__getitem__, ids))
        if set(map(type, values)) != _DECIMAL_ONLY:
            raise TypeError  # ints, floats, strs...: the general path below
        as_floats = float_weights(values)
        if as_floats is not None:  # all positive: nothing to drop
            return _Weights(tuple(ids), values, as_floats)
        if not all(map(_DECIMAL_ZERO.__lt__, values)):  # NaN raises InvalidOperation
            positive = [item for item in zip(ids, values, strict=True) if item[1] > _DECIMAL_ZERO]
            if not positive:
                return None
            ids, values = zip(*positive, strict=True)
    except (InvalidOperation, TypeError):
        try:
            positive = [item for item in sorted(weights.items()) if item[1] > 0]
        except (InvalidOperation, TypeError):  # NaN weights, or str mixed in
            converted = ((i, _as_decimal(w)) for i, w in weights.items())
            positive = sorted((i, w) for i, w in converted if w.is_finite() and w > 0)
        if not positive:
            return None
        ids, values = zip(*positive, strict=True)
        if not set(map(type, values)) <= _EXACT_TYPES:
            values = [_as_decimal(w) for w in values]  # floats → Decimal(str(v))
    if not ids:
        return None
    return _Weights(tuple(ids), values, float_weights(values))


class Terminal(Model):
    """Always one row with the whole amount: `target` is "resource" (the billed resource id, or
    `UNALLOCATED` when the line has none), "UNALLOCATED", or a literal identity id."""

    __slots__ = ("target", "cost_type", "detail", "method")

    def __init__(self, target: str, cost_type: str, detail: str, method: str = "terminal") -> None:
        if not target:
            raise ValueError("Terminal target must not be empty")
        self.target = target
        self.cost_type = cost_type
        self.detail = detail
        self.method = method

    def target_for(self, ctx_or_line: Any) -> str:
        """The identity this terminal charges for a line (or a context carrying `billing_line`)."""
        if self.target != "resource":
            return self.target
        line = getattr(ctx_or_line, "billing_line", ctx_or_line)
        return line.resource_id or UNALLOCATED

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list[Block]:
        return [((self.target_for(ctx),), (units,), self.cost_type, self.method, self.detail, part)]

    def __repr__(self) -> str:
        return f"Terminal({self.target!r}, {self.cost_type!r}, {self.detail!r}, method={self.method!r})"


# Tiers the ecosystems' allocator tables share (docs/allocation.md §9).
def to_unallocated(detail: str = "no_identities_located") -> Terminal:
    """Last tier of a chain: what no identity took goes to UNALLOCATED."""
    return Terminal(UNALLOCATED, "shared", detail)


UNKNOWN_TO_UNALLOCATED = Terminal(UNALLOCATED, "shared", "using_unknown_allocator", method="unknown")


class _CallableTier(Model):
    """A plain `Allocator` used as a tier: called with `ctx.amount` set to the amount it is given."""

    __slots__ = ("fn",)

    def __init__(self, fn: Allocator) -> None:
        self.fn = fn

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list[Block]:
        amount = units_to_decimal(units)
        sub = ctx if ctx.amount == amount else dataclasses.replace(ctx, amount=amount)
        rows = self.fn(sub)
        return [
            (
                (r.identity_id,),
                (r.amount_units,),
                r.cost_type,
                r.allocation_method,
                r.allocation_detail,
                part or r.composition_part,
            )
            for r in rows
        ]


def _as_model(tier: Any) -> Model:
    if isinstance(tier, Model):
        return tier
    if callable(tier):
        return _CallableTier(tier)
    raise TypeError(f"Chain tier must be an allocation model or a callable, got {type(tier).__name__}")


class Chain(Model):
    """Tries the tiers in order; the first non-empty result wins. The last tier is a Terminal."""

    __slots__ = ("tiers",)

    def __init__(self, *tiers: Any) -> None:
        if not tiers:
            raise ValueError("Chain requires at least one tier")
        if not isinstance(tiers[-1], Terminal):
            raise ValueError(f"Chain last tier must be a Terminal; got {type(tiers[-1]).__name__}")
        self.tiers: tuple[Model, ...] = tuple(_as_model(t) for t in tiers)

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list[Block]:
        for tier in self.tiers:
            result = tier.blocks(ctx, units, part)
            if result:
                return result
        return []  # unreachable: the last tier is a Terminal

    def target_for(self, ctx_or_line: Any) -> str | None:
        """The terminal target when the chain is a single Terminal (used for the unknown-type warning)."""
        if len(self.tiers) == 1:
            return self.tiers[0].target_for(ctx_or_line)  # type: ignore[attr-defined]
        return None

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.tiers))})"


class Composition(Model):
    """Splits the amount into fixed-ratio parts (docs/allocation.md §1), each allocated by its own chain.

    Rows carry the part name as `composition_part` (decision D2).
    """

    __slots__ = ("parts", "names", "ratios", "chains", "_fractions")

    def __init__(self, parts: Sequence[tuple[str, Decimal, Chain]]) -> None:
        parts = [(name, _as_decimal(ratio), _as_model(chain)) for name, ratio, chain in parts]
        total = sum((ratio for _, ratio, _ in parts), Decimal(0))
        if not parts or abs(total - 1) > COMPOSITION_RATIO_TOLERANCE:
            raise ValueError(f"Composition ratios must sum to 1.0, got {total}")
        for name, ratio, _chain in parts:
            if not name:
                raise ValueError("Composition part names must not be empty")
            if ratio < 0:
                raise ValueError(f"Composition ratio of part '{name}' must be >= 0, got {ratio}")
        self.parts = parts
        self.names = tuple(name for name, _, _ in parts)
        self.ratios = tuple(ratio for _, ratio, _ in parts)
        self.chains = tuple(chain for _, _, chain in parts)
        self._fractions = tuple(ratio.as_integer_ratio() for ratio in self.ratios[:-1])

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list[Block]:
        result: list[Block] = []
        rest = units
        last = len(self._fractions)
        for j, (name, chain) in enumerate(zip(self.names, self.chains, strict=True)):
            if j < last:  # composition_parts(units, self.ratios) with the ratios' fractions precomputed
                num, den = self._fractions[j]
                part_units = div_round_half_up(units * num, den)
                rest -= part_units
            else:
                part_units = rest
            result.extend(chain.blocks(ctx, part_units, name))
        return result

    def __repr__(self) -> str:
        return f"Composition({self.parts!r})"


def _as_decimal(x: Any) -> Decimal:
    if isinstance(x, Decimal):
        return x
    if isinstance(x, bool):
        raise TypeError("Weights and ratios must be numbers, got bool")
    if isinstance(x, int):
        return Decimal(x)
    if isinstance(x, float):
        return Decimal(str(x))
    if isinstance(x, str):
        return Decimal(x)
    raise TypeError(f"Weights and ratios must be numbers, got {type(x).__name__}")


def usage_weights(metric_rows: Iterable[MetricRow], label: str) -> dict[str, Decimal]:
    """Sum `value_sum` per value of `label` (`Decimal(str(v))`); rows without the label are skipped.

    All sums are returned (zero and negative included); `UsageRatio` drops the ones ≤ 0.
    """
    totals: dict[str, Decimal] = {}
    for row in metric_rows:
        key = row.labels.get(label)
        if not key or not math.isfinite(row.value_sum):
            continue
        totals[key] = totals.get(key, Decimal(0)) + Decimal(str(row.value_sum))
    return totals
