"""Exact amount arithmetic: on-chain integers to decimal strings, values and totals.

Nothing here ever sees a float.  Amounts are ``int`` scaled by ``10**decimals``;
prices and values are ``Fraction``; the only rounding is ``round_half_even`` for
totals in the base currency.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

__all__ = [
    "MIN_FRACTION_DIGITS",
    "format_amount",
    "format_fraction",
    "round_half_even",
    "value_of",
]

MIN_FRACTION_DIGITS = 2


def format_amount(raw: int, decimals: int) -> str:
    """Render ``raw / 10**decimals`` exactly, with at least two fraction digits.

    Trailing zeros beyond the second fraction digit are trimmed:
    (1250500000, 6) -> "1250.50", (0, 18) -> "0.00", (1, 18) -> "0.000000000000000001".
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    sign = "-" if raw < 0 else ""
    digits = str(abs(raw)).rjust(decimals + 1, "0")
    whole = digits[: len(digits) - decimals] if decimals else digits
    fraction = digits[len(digits) - decimals :] if decimals else ""
    fraction = fraction.rstrip("0").ljust(MIN_FRACTION_DIGITS, "0")
    return f"{sign}{whole}.{fraction}"


def value_of(raw: int, decimals: int, price: Fraction) -> Fraction:
    """The exact value of ``raw / 10**decimals`` units at ``price`` per unit."""
    return Fraction(raw, 10**decimals) * price


def round_half_even(values: Iterable[Fraction], minor_unit_digits: int) -> Fraction:
    """Sum ``values`` exactly, then round once, half to even, to the currency's minor unit."""
    total = sum(values, Fraction(0))
    return Fraction(round(total, minor_unit_digits))


def format_fraction(value: Fraction, digits: int) -> str:
    """Render a value already rounded to ``digits`` places with exactly that many places."""
    scaled = value * 10**digits
    if scaled.denominator != 1:
        raise ValueError(f"{value} is not a multiple of 10**-{digits}; round it first")
    return _fixed(int(scaled), digits)


def _fixed(scaled: int, digits: int) -> str:
    """Fixed-point rendering with exactly ``digits`` fraction digits (USD 2, JPY 0)."""
    sign = "-" if scaled < 0 else ""
    text = str(abs(scaled)).rjust(digits + 1, "0")
    if digits == 0:
        return sign + text
    return f"{sign}{text[:-digits]}.{text[-digits:]}"
