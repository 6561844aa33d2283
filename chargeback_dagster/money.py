"""Exact money math (allocation.md §1).

Amounts are `Decimal` or integer **units** of 0.0001. Splits work on integers only: no floats, no
context-dependent Decimal rounding. Every function here is pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

UNIT = Decimal("0.0001")
UNITS_PER_ONE = 10_000


def round4(x: Decimal) -> Decimal:
    """Quantize to 0.0001 with ROUND_HALF_UP (the only rounding used for amounts)."""
    return x.quantize(UNIT, rounding=ROUND_HALF_UP)


def _as_fraction(x: Decimal) -> tuple[int, int]:
    """Exact (numerator, denominator > 0) of a finite Decimal."""
    try:
        return x.as_integer_ratio()
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"Amount must be finite, got {x}") from exc


def div_round_half_up(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded half away from zero (ROUND_HALF_UP), exactly."""
    if denominator <= 0:
        raise ValueError("denominator must be > 0")
    q, r = divmod(abs(numerator), denominator)
    if 2 * r >= denominator:
        q += 1
    return -q if numerator < 0 else q


def to_units(x: Decimal) -> int:
    """Units of an amount that already has at most 4 decimal places (ValueError otherwise)."""
    num, den = _as_fraction(x)
    units, rest = divmod(num * UNITS_PER_ONE, den)
    if rest:
        raise ValueError(f"Amount {x} has more than 4 decimal places")
    return units


def round4_units(x: Decimal) -> int:
    """`to_units(round4(x))`, computed exactly for any finite Decimal."""
    try:
        num, den = x.as_integer_ratio()
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"Amount must be finite, got {x}") from exc
    if den == 1:
        return num * UNITS_PER_ONE
    q, r = divmod(-num * UNITS_PER_ONE if num < 0 else num * UNITS_PER_ONE, den)
    if 2 * r >= den:  # ROUND_HALF_UP: half away from zero
        q += 1
    return -q if num < 0 else q


def scaled_round4_units(x: Decimal, numerator: int, denominator: int) -> int:
    """Units of `round4(x × numerator / denominator)`, exact (e.g. `total_cost × f`)."""
    num, den = _as_fraction(x)
    return div_round_half_up(num * numerator * UNITS_PER_ONE, den * denominator)


def units_to_decimal(u: int) -> Decimal:
    """Units → Decimal with exactly 4 decimal places (`100000` → `Decimal("10.0000")`)."""
    return Decimal(u).scaleb(-4)


def format_units(u: int) -> str:
    """Units → text with 4 decimals: `100000` → `10.0000`, `-33334` → `-3.3334`, `0` → `0.0000`."""
    whole, frac = divmod(abs(u), UNITS_PER_ONE)
    return f"{'-' if u < 0 else ''}{whole}.{frac:04d}"


def split_units(total: int, weights: Sequence[int]) -> list[int]:
    """Largest-remainder split of `total` units by integer weights (allocation.md §1).

    `q_i = total × w_i / Σw` exactly; `share_i = trunc(q_i)`; the `|k|` leftover units go, one each with
    the sign of `total`, to the largest `|q_i − share_i|`, ties to the earlier index. The caller passes
    the weights in identity order (sorted by identity_id, decision D4). Weights must be ≥ 0 with a
    positive sum; an empty sequence gives `[]`.
    """
    if len(weights) == 0:
        return []
    if min(weights) < 0:
        raise ValueError(f"Weights must be >= 0, got {min(weights)}")
    wsum = sum(weights)
    if wsum == 0:
        raise ValueError("Weights must sum to > 0")
    return apportion_units(total, weights, wsum)


def apportion_units(total: int, weights: Sequence[int], wsum: int) -> list[int]:
    """`split_units` for weights already checked: all ≥ 0, `wsum` = Σ weights > 0, at least one."""
    magnitude = -total if total < 0 else total
    if magnitude == 0:
        return [0] * len(weights)
    pairs = [divmod(magnitude * w, wsum) for w in weights]
    shares = [s for s, _ in pairs]
    k = magnitude - sum(shares)
    if k:
        remainders = [r for _, r in pairs]
        # sorted() is stable, also with reverse=True: equal remainders keep index order, so ties go to
        # the earlier identity.
        for i in sorted(range(len(remainders)), key=remainders.__getitem__, reverse=True)[:k]:
            shares[i] += 1
    if total < 0:
        return [-s for s in shares]
    return shares


def even_split_units(total: int, n: int) -> list[int]:
    """Equal-weight split of `total` units over `n` identities; the extra units go to the first ones.

    `1000 / 3` → `[334, 333, 333]`; `-1000 / 3` → `[-334, -333, -333]`; `n = 0` → `[]`.
    Identical to `split_units(total, [1] * n)`.
    """
    if n <= 0:
        return []
    if total >= 0:
        q, r = divmod(total, n)
        return [q + 1] * r + [q] * (n - r)
    q, r = divmod(-total, n)
    return [-q - 1] * r + [-q] * (n - r)


def decimal_weights_to_ints(ws: Sequence[Decimal]) -> list[int]:
    """Scale Decimal weights by one common factor so that all become integers (ratios kept exactly).

    The factor is the least common multiple of the weights' denominators, a divisor of the power of ten
    that makes every weight integral (`[1.5, 2, 1E+3]` → `[3, 4, 2000]`). int weights pass unchanged.
    """
    try:
        fractions = [w.as_integer_ratio() for w in ws]  # exact for Decimal and int
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"Weights must be finite, got {list(ws)}") from exc
    scale = math.lcm(*(den for _, den in fractions)) if fractions else 1
    if scale == 1:
        return [num for num, _ in fractions]
    return [num * (scale // den) for num, den in fractions]


def composition_parts(amount_units: int, ratios: Sequence[Decimal]) -> list[int]:
    """Composition of an amount (allocation.md §1): part j < m = round4(A × r_j), last = A − Σ earlier."""
    if not ratios:
        return []
    parts = []
    for r in ratios[:-1]:
        num, den = _as_fraction(r)
        parts.append(div_round_half_up(amount_units * num, den))
    parts.append(amount_units - sum(parts))
    return parts
