"""Money math of docs/allocation.md §1."""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import pytest

from chargeback_dagster.money import (
    UNIT,
    apportion_float,
    apportion_units,
    composition_parts,
    decimal_weights_to_ints,
    div_round_half_up,
    even_split_units,
    float_weights,
    format_units,
    round4,
    round4_units,
    scaled_round4_units,
    split_units,
    to_units,
    units_to_decimal,
)


def fmt(units: list[int]) -> list[str]:
    return [format_units(u) for u in units]


def test_unit_and_round4_half_up() -> None:
    assert Decimal("0.0001") == UNIT
    assert round4(Decimal("0.00005")) == Decimal("0.0001")
    assert round4(Decimal("0.00004999")) == Decimal("0.0000")
    assert round4(Decimal("-0.00005")) == Decimal("-0.0001")  # half away from zero
    assert round4(Decimal("1.23455")) == Decimal("1.2346")
    assert str(round4(Decimal("10"))) == "10.0000"


def test_round4_units_matches_round4() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        x = Decimal(rng.randint(-(10**12), 10**12)).scaleb(-rng.randint(0, 9))
        assert round4_units(x) == to_units(round4(x))


def test_to_units_and_back() -> None:
    assert to_units(Decimal("10.00")) == 100000
    assert to_units(Decimal("10")) == 100000
    assert to_units(Decimal("1E+2")) == 1000000
    assert to_units(Decimal("-3.3334")) == -33334
    assert to_units(Decimal("0.0000")) == 0
    with pytest.raises(ValueError, match="more than 4 decimal places"):
        to_units(Decimal("0.00001"))
    with pytest.raises(ValueError):
        to_units(Decimal("NaN"))
    assert units_to_decimal(100000) == Decimal("10.0000")
    assert str(units_to_decimal(100000)) == "10.0000"
    assert str(units_to_decimal(0)) == "0.0000"
    assert str(units_to_decimal(-1)) == "-0.0001"


def test_format_units() -> None:
    assert format_units(100000) == "10.0000"
    assert format_units(-33334) == "-3.3334"
    assert format_units(0) == "0.0000"
    assert format_units(-1) == "-0.0001"
    assert format_units(1) == "0.0001"
    assert format_units(12345678901234) == "1234567890.1234"
    # around the digit-cutting fast path (u >= 10000) and its slow-path neighbours
    assert [format_units(u) for u in (9999, 10000, 10001, 100009, -9999, -10, -10000, -10001)] == [
        "0.9999",
        "1.0000",
        "1.0001",
        "10.0009",
        "-0.9999",
        "-0.0010",
        "-1.0000",
        "-1.0001",
    ]


def test_div_round_half_up_and_scaled() -> None:
    assert div_round_half_up(5, 10) == 1
    assert div_round_half_up(-5, 10) == -1
    assert div_round_half_up(4, 10) == 0
    assert div_round_half_up(-14, 10) == -1
    # 24.00 × 18h/24h = 18.0000
    assert scaled_round4_units(Decimal("24.00"), 18, 24) == 180000
    assert scaled_round4_units(Decimal("0.00015"), 1, 1) == 2
    assert scaled_round4_units(Decimal("-10"), 1, 3) == -33333


# ---- every row of the table in docs/allocation.md §1 ---


def test_table_10_even_over_3() -> None:
    assert fmt(even_split_units(to_units(Decimal("10.00")), 3)) == ["3.3334", "3.3333", "3.3333"]
    assert fmt(split_units(to_units(Decimal("10.00")), [1, 1, 1])) == ["3.3334", "3.3333", "3.3333"]


def test_table_2_even_over_3() -> None:
    assert fmt(even_split_units(to_units(Decimal("2.00")), 3)) == ["0.6667", "0.6667", "0.6666"]
    assert fmt(split_units(to_units(Decimal("2.00")), [1, 1, 1])) == ["0.6667", "0.6667", "0.6666"]


def test_table_negative_10_even_over_3() -> None:
    assert fmt(even_split_units(to_units(Decimal("-10.00")), 3)) == ["-3.3334", "-3.3333", "-3.3333"]
    assert fmt(split_units(to_units(Decimal("-10.00")), [1, 1, 1])) == ["-3.3334", "-3.3333", "-3.3333"]


def test_table_tiny_total_cost_even_over_2() -> None:
    t = round4(Decimal("0.00009"))
    assert t == Decimal("0.0001")
    assert fmt(even_split_units(to_units(t), 2)) == ["0.0001", "0.0000"]
    assert fmt(split_units(to_units(t), [1, 1])) == ["0.0001", "0.0000"]


def test_table_zero_even_over_3() -> None:
    assert fmt(even_split_units(0, 3)) == ["0.0000"] * 3
    assert fmt(split_units(0, [1, 1, 1])) == ["0.0000"] * 3


def test_table_usage_60_40() -> None:
    assert fmt(split_units(to_units(Decimal("10.00")), [60, 40])) == ["6.0000", "4.0000"]


def test_table_usage_1_1_1() -> None:
    assert fmt(split_units(to_units(Decimal("100.00")), [1, 1, 1])) == ["33.3334", "33.3333", "33.3333"]


def test_table_usage_33_33_34() -> None:
    assert fmt(split_units(to_units(Decimal("100.00")), [33, 33, 34])) == ["33.0000", "33.0000", "34.0000"]


def test_table_usage_3_1_2_largest_remainder() -> None:
    # q = 50, 16.67, 33.33 → b has the largest remainder and gets the leftover unit
    assert fmt(split_units(to_units(Decimal("0.0100")), [3, 1, 2])) == ["0.0050", "0.0017", "0.0033"]


# ---- further split properties ---


def test_split_edge_cases() -> None:
    assert split_units(100, []) == []
    assert even_split_units(100, 0) == []
    with pytest.raises(ValueError, match="sum to > 0"):
        split_units(100, [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        split_units(100, [1, -1])
    # a zero weight never receives a leftover unit
    assert split_units(1, [0, 1, 1]) == [0, 1, 0]


def test_split_ties_go_to_earlier_index() -> None:
    assert split_units(2, [1, 1, 1, 1]) == [1, 1, 0, 0]
    assert split_units(-2, [1, 1, 1, 1]) == [-1, -1, 0, 0]


def test_even_split_equals_split_units() -> None:
    rng = random.Random(3)
    for _ in range(500):
        total = rng.randint(-(10**9), 10**9)
        n = rng.randint(1, 40)
        assert even_split_units(total, n) == split_units(total, [1] * n)


def test_split_property_exact_and_within_one_unit() -> None:
    rng = random.Random(20260310)
    for _ in range(3000):
        total = rng.randint(-(10**10), 10**10)
        n = rng.randint(1, 25)
        weights = [rng.randint(1, 10 ** rng.randint(0, 12)) for _ in range(n)]
        shares = split_units(total, weights)
        assert sum(shares) == total
        wsum = sum(weights)
        for s, w in zip(shares, weights, strict=True):
            exact = Fraction(total * w, wsum)
            assert abs(s - exact) < 1
            # shares never cross zero in the wrong direction
            assert s * total >= 0


def test_decimal_weights_to_ints() -> None:
    assert decimal_weights_to_ints([Decimal("1.5"), Decimal("2"), Decimal("1E+3")]) == [3, 4, 2000]
    assert decimal_weights_to_ints([Decimal("0.25"), Decimal("0.5")]) == [1, 2]
    assert decimal_weights_to_ints([]) == []
    assert decimal_weights_to_ints([Decimal(str(300.0)), Decimal(str(700.0))]) == [300, 700]
    ws = [Decimal("0.123456789012345678901234567890123"), Decimal("7")]
    ints = decimal_weights_to_ints(ws)
    assert Fraction(ints[0], ints[1]) == Fraction(ws[0]) / Fraction(ws[1])  # exact, beyond 28 digits
    with pytest.raises(ValueError):
        decimal_weights_to_ints([Decimal("NaN")])


def test_composition_parts() -> None:
    assert composition_parts(1000000, [Decimal("0.70"), Decimal("0.30")]) == [700000, 300000]
    assert composition_parts(1000000, [Decimal("0.6"), Decimal("0.4")]) == [600000, 400000]
    # part j < m = round4(A × r_j) half up, last = A − Σ
    assert composition_parts(1, [Decimal("0.5"), Decimal("0.5")]) == [1, 0]
    assert composition_parts(-1, [Decimal("0.5"), Decimal("0.5")]) == [-1, 0]
    assert composition_parts(33333, [Decimal("0.7"), Decimal("0.3")]) == [23333, 10000]
    assert composition_parts(100, [Decimal("1")]) == [100]
    assert composition_parts(100, []) == []


def test_apportion_units_equals_split_units() -> None:
    rng = random.Random(8)
    for _ in range(500):
        total = rng.choice([0, 1, -1, rng.randint(-(10**12), 10**12)])
        weights = [rng.randint(0, 10 ** rng.randint(0, 20)) for _ in range(rng.randint(1, 30))]
        weights[0] += 1  # positive sum
        assert apportion_units(total, weights, sum(weights)) == split_units(total, weights)


# ---- float fast path of the split: proven exact or refused ---


def _random_weight(rng: random.Random, shape: int) -> Decimal | int:
    if shape == 0:  # the benchmark's worst case: 17 significant digits
        return Decimal(str(rng.uniform(1, 1e9)))
    if shape == 1:  # small integers: many exact ties
        return Decimal(rng.randint(1, 4))
    if shape == 2:
        return Decimal(str(rng.random()))  # may be 0: dropped by float_weights
    if shape == 3:  # up to 30 digits, far beyond a float's precision
        return Decimal(rng.randint(1, 10**30)).scaleb(-rng.randint(0, 40))
    if shape == 4:  # tiny and huge magnitudes, some outside the float range of the fast path
        return Decimal(f"{rng.randint(1, 9)}E{rng.randint(-400, 400)}")
    if shape == 5:  # near-duplicates: remainders within a hair of each other
        return Decimal("123456789.123456789") + Decimal(rng.randint(-2, 2)).scaleb(-rng.randint(9, 25))
    if shape == 6:
        return rng.randint(1, 10**20)  # ints (a resolver may give them)
    return Decimal(rng.choice([0, -1, "-0.5", "NaN", "Infinity"]))  # never usable as floats


def _random_total(rng: random.Random, n: int) -> int:
    return rng.choice(
        [
            0,
            1,
            -1,
            rng.randint(-100, 100),
            rng.randint(-(10**9), 10**9),  # credits are negative
            n * rng.randint(1, 10**6),  # shares land exactly on integers
            rng.randint(-(2**53), 2**53),
            rng.randint(-(10**20), 10**20),  # beyond 2**53: always refused
        ]
    )


def test_apportion_float_is_exact_or_refuses() -> None:
    rng = random.Random(20260311)
    proven = refused = 0
    for case in range(6000):
        n = rng.choice([1, 2, 3, 7, 30, 100])
        shapes = [rng.randrange(8)] if rng.random() < 0.6 else list(range(8))
        weights = [_random_weight(rng, rng.choice(shapes)) for _ in range(n)]
        total = _random_total(rng, n)
        as_floats = float_weights(weights)
        if as_floats is None:
            # only weights that are all finite, > 0 and within [2**-500, 2**500] get floats
            assert not all(
                isinstance(w, int) or (w.is_finite() and w > 0 and Decimal("1E-150") < w < Decimal("1E+150"))
                for w in weights
            ), case
            refused += 1
            continue
        ints = decimal_weights_to_ints(weights)
        exact = apportion_units(total, ints, sum(ints))
        shares = apportion_float(total, *as_floats)
        if shares is None:
            refused += 1
            continue
        assert shares == exact, (case, total, weights)
        assert all(type(s) is int for s in shares)
        proven += 1
    assert proven > 1000 and refused > 1000  # both paths exercised


def test_apportion_float_typical_and_edge_cases() -> None:
    weights = [Decimal(str(w)) for w in (1234.5, 99.25, 0.001, 7e8)]
    as_floats = float_weights(weights)
    assert as_floats is not None
    ints = decimal_weights_to_ints(weights)
    for total in (12345678, -12345678, 1, -1, 3, 0):
        shares = apportion_float(total, *as_floats)
        assert shares is None or shares == apportion_units(total, ints, sum(ints))
    assert apportion_float(12345678, *as_floats) is not None  # the common case is proven
    assert apportion_float(0, *as_floats) == [0, 0, 0, 0]
    assert apportion_float(2**53 + 1, *as_floats) is None  # the total is not an exact float
    # exact ties (equal weights) cannot be ordered by floats: refused, the exact split decides
    equal = float_weights([Decimal(1)] * 3)
    assert equal is not None and apportion_float(100, *equal) is None
    assert float_weights([]) is None
    assert float_weights([Decimal(1), Decimal(0)]) is None
    assert float_weights([Decimal(1), Decimal("sNaN")]) is None
    assert float_weights([Decimal(1), Decimal("NaN"), Decimal(2)]) is None
    for specials in (["NaN", "-Infinity", "Infinity"], ["1", "NaN", "Infinity", "-Infinity", "2"]):
        assert float_weights([Decimal(x) for x in specials]) is None
    assert float_weights([Decimal("1E+400")]) is None
    assert float_weights([10**400]) is None


def test_units_to_decimal_equals_scaleb() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        u = rng.choice([0, 1, -1, rng.randint(-(10**12), 10**12), rng.randint(-(10**40), 10**40)])
        fast, slow = units_to_decimal(u), Decimal(u).scaleb(-4)
        assert fast.as_tuple() == slow.as_tuple()  # same digits and exponent, also when rounded
