"""Money rules from DESIGN.md, checked over the whole uint256 range and decimals 0-36."""

from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.money import format_amount, format_fraction, round_half_even, value_of

UINT256 = st.integers(min_value=0, max_value=2**256 - 1)
DECIMALS = st.integers(min_value=0, max_value=36)


@pytest.mark.parametrize(
    ("raw", "decimals", "expected"),
    [
        (1250500000, 6, "1250.50"),
        (0, 6, "0.00"),
        (0, 0, "0.00"),
        (1, 18, "0.000000000000000001"),
        (7, 0, "7.00"),
        (10, 1, "1.00"),
        (123, 3, "0.123"),
        (1_000_000_000_000_000_000, 18, "1.00"),
        (
            2**256 - 1,
            18,
            "115792089237316195423570985008687907853269984665640564039457.584007913129639935",
        ),
        (
            2**256 - 1,
            0,
            "115792089237316195423570985008687907853269984665640564039457584007913129639935.00",
        ),
    ],
)
def test_format_amount_examples(raw: int, decimals: int, expected: str) -> None:
    assert format_amount(raw, decimals) == expected


@given(UINT256, DECIMALS)
def test_format_amount_is_exact(raw: int, decimals: int) -> None:
    text = format_amount(raw, decimals)
    assert Fraction(text) == Fraction(raw, 10**decimals)


@given(UINT256, DECIMALS)
def test_format_amount_shape(raw: int, decimals: int) -> None:
    text = format_amount(raw, decimals)
    whole, _, fraction = text.partition(".")
    assert whole.isdigit() and (whole == "0" or not whole.startswith("0"))
    assert len(fraction) >= 2 and fraction.isdigit()
    if len(fraction) > 2:
        assert not fraction.endswith("0")
    assert len(fraction) <= max(2, decimals)


@given(UINT256, DECIMALS)
def test_format_amount_agrees_with_decimal(raw: int, decimals: int) -> None:
    with localcontext() as ctx:
        ctx.prec = 200
        reference = Decimal(raw).scaleb(-decimals)
    assert Decimal(format_amount(raw, decimals)) == reference


def test_negative_decimals_rejected() -> None:
    with pytest.raises(ValueError, match="decimals"):
        format_amount(1, -1)


@given(
    st.lists(st.tuples(UINT256, DECIMALS, st.fractions(min_value=0, max_value=10**6)), max_size=8)
)
def test_total_is_sum_rounded_once_half_even(items: list[tuple[int, int, Fraction]]) -> None:
    values = [value_of(raw, decimals, price) for raw, decimals, price in items]
    total = round_half_even(values, 2)
    exact = sum(values, Fraction(0))
    assert abs(total - exact) <= Fraction(1, 200)
    assert (total * 100).denominator == 1
    with localcontext() as ctx:
        ctx.prec = 400
        exact_decimal = Decimal(exact.numerator) / Decimal(exact.denominator)
        expected = exact_decimal.quantize(Decimal("0.01"), rounding="ROUND_HALF_EVEN")
    assert Decimal(format_fraction(total, 2)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(5, 1000), "0.00"),  # 0.005 -> even neighbour 0.00
        (Fraction(15, 1000), "0.02"),  # 0.015 -> even neighbour 0.02
        (Fraction(25, 1000), "0.02"),
        (Fraction(250075, 100), "2500.75"),
        (Fraction(2500), "2500.00"),
    ],
)
def test_half_even_examples(value: Fraction, expected: str) -> None:
    assert format_fraction(round_half_even([value], 2), 2) == expected


def test_format_fraction_refuses_unrounded() -> None:
    with pytest.raises(ValueError, match="round it first"):
        format_fraction(Fraction(1, 3), 2)


def test_format_fraction_zero_digit_currency() -> None:
    assert format_fraction(Fraction(12), 0) == "12"
