"""Exact money math (docs/allocation.md §1).

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
    return UNIT * u  # = Decimal(u).scaleb(-4) (same coefficient, exponent and context rounding), faster


def format_units(u: int) -> str:
    """Units → text with 4 decimals: `100000` → `10.0000`, `-33334` → `-3.3334`, `0` → `0.0000`."""
    # Hot when writing CSV files: one conversion to text and no arithmetic.
    if u >= UNITS_PER_ONE or u <= -UNITS_PER_ONE:  # 5 digits or more: put the point before the last 4
        digits = str(u)
        return f"{digits[:-4]}.{digits[-4:]}"
    return f"0.{u:04d}" if u >= 0 else f"-0.{-u:04d}"


def split_units(total: int, weights: Sequence[int]) -> list[int]:
    """Largest-remainder split of `total` units by integer weights (docs/allocation.md §1).

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


# Float fast path of the split (`apportion_float`). Weights are used as floats only inside
# [_FLOAT_WEIGHT_MIN, _FLOAT_WEIGHT_MAX], so that no intermediate value overflows or leaves the normal
# range, and only for |total| ≤ 2**53 units, so that the total is an exact float.
_FLOAT_WEIGHT_MIN = 2.0**-500
_FLOAT_WEIGHT_MAX = 2.0**500
_FLOAT_UNITS_MAX = 2**53
# Bound on |estimate − exact| of `apportion_float`, relative to |total| (8 u, u = 2**-53; proof there).
_FLOAT_ERROR = 2.0**-50


def float_weights(weights: Sequence[Decimal | int]) -> tuple[list[float], float] | None:
    """Floats of positive weights and their sum, as `apportion_float` needs them.

    Each float is the correctly rounded value of its weight (`float()` of a Decimal or an int is) and the
    sum is `math.fsum`, correctly rounded. None when a weight is ≤ 0, not finite, or outside
    [2**-500, 2**500]: the caller then splits with the exact integer weights only.
    """
    try:
        floats = list(map(float, weights))
    except (ValueError, OverflowError):  # a signaling NaN, an int beyond the float range
        return None
    # min() and max() skip a NaN that is not first, but then see every infinity: fsum gets none
    if not floats or not (min(floats) >= _FLOAT_WEIGHT_MIN and max(floats) <= _FLOAT_WEIGHT_MAX):
        return None
    total = math.fsum(floats)
    if not total <= _FLOAT_WEIGHT_MAX * len(floats):  # False for NaN
        return None
    return floats, total


def apportion_float(total: int, weights: Sequence[float], wsum: float) -> list[int] | None:
    """`apportion_units` computed with floats, or None when floats cannot prove the exact result.

    `weights` and `wsum` come from `float_weights`: correctly rounded floats a_i of the exact weights
    w_i > 0 and their `fsum`. Let M = |total| ≤ 2**53 (an exact float), n weights, u = 2**-53 and
    E = 8u·M. Every rounding has relative error ≤ u: a_i = w_i(1 + ε_i), wsum = Σw·(1 + ε')(1 + δ)
    (|ε'| ≤ u as all w_i > 0), r = M / wsum, f_i = a_i × r; so |f_i − q_i| ≤ ((1 + u)**3 / (1 − u)**2 − 1)
    ·q_i < 6u·M for the exact q_i = M × w_i / Σw ≤ M. The bounds of `float_weights` keep every step in
    the normal range (an underflow of f_i would add at most 2**-1075). Then, for t_i = f_i mod 1 (exact):
      * all t_i in (E, 1 − E) ⇒ trunc(q_i) = trunc(f_i) and the exact fractional part φ_i is within 6u·M
        of t_i; so k = Σφ_i (an integer) is round(fsum(t)), as n·E < 1/2;
      * the k-th largest t_i above the next one by more than 2E ⇒ the k identities with the largest t_i
        are exactly those with the largest φ_i, no tie to break. Adding o = 1 − (midpoint of the two)
        to every f_i takes those k more than E/(1 + u) past the next integer and leaves the others more
        than E/(1 + u) short of it (and above trunc(f_i), as t_i > E and the midpoint < 1 − E); the
        roundings of the midpoint, of o and of f_i + o move values by less than u·(M + 4) < E/(1 + u),
        so trunc() gives trunc(q_i) + 1 for those k and trunc(q_i) for the others (negated for a
        negative total: rounding is symmetric).
    """
    magnitude = -total if total < 0 else total
    if magnitude == 0:
        return [0] * len(weights)
    error = magnitude * _FLOAT_ERROR
    if magnitude > _FLOAT_UNITS_MAX or len(weights) * error >= 0.5:
        return None
    ratio = magnitude / wsum
    estimates = [w * ratio for w in weights]
    fractions = [f % 1.0 for f in estimates]
    ranked = sorted(fractions)
    if not (ranked[0] > error and ranked[-1] < 1.0 - error):
        return None
    k = round(math.fsum(fractions))
    offset = 0.0
    if k:
        cut, below = ranked[-k], ranked[-k - 1]
        if not cut - below > 2.0 * error:
            return None
        offset = 1.0 - (cut + below) / 2
    shifted = [f + offset for f in estimates] if total > 0 else [-f - offset for f in estimates]
    return list(map(float.__trunc__, shifted))  # int(), toward zero, without the constructor call


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
    """Composition (docs/allocation.md §1): part j < m = round4(A × r_j), last = A − Σ earlier."""
    if not ratios:
        return []
    parts = []
    for r in ratios[:-1]:
        num, den = _as_fraction(r)
        parts.append(div_round_half_up(amount_units * num, den))
    parts.append(amount_units - sum(parts))
    return parts
