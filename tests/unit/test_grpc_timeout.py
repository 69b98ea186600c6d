"""The REST ``Grpc-Timeout`` header: grpc-gateway's grammar, clamped, never overflowing."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.gateway.errors import GatewayError
from service.gateway.metadata import MAX_TIMEOUT_SECONDS, grpc_timeout


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("100m", 0.1),
        ("5S", 5.0),
        ("2M", 120.0),
        ("1H", 3600.0),
        ("1n", 1e-9),
        ("250u", 250e-6),
        (" 7S ", 7.0),
        ("720H", MAX_TIMEOUT_SECONDS),
        ("721H", MAX_TIMEOUT_SECONDS),
        ("99999999H", MAX_TIMEOUT_SECONDS),
        ("99999999M", MAX_TIMEOUT_SECONDS),
        ("99999999S", MAX_TIMEOUT_SECONDS),
    ],
)
def test_valid_values(value: str, seconds: float) -> None:
    assert grpc_timeout(value, 30.0) == pytest.approx(seconds)


def test_no_header_is_the_default() -> None:
    assert grpc_timeout(None, 30.0) == 30.0


@pytest.mark.parametrize("value", ["", "0S", "00000000H", "-0S"])
def test_no_value_or_zero_is_the_default(value: str) -> None:
    """grpc-gateway: an empty header or a zero timeout sets no deadline of the client's."""
    assert grpc_timeout(value, 30.0) == 30.0


@pytest.mark.parametrize("value", ["123456789S", "+5S", "9223372036854775807n"])
def test_go_integers_are_accepted(value: str) -> None:
    assert 0 < grpc_timeout(value, 30.0) <= MAX_TIMEOUT_SECONDS


def test_a_negative_timeout_has_expired() -> None:
    with pytest.raises(GatewayError) as caught:
        grpc_timeout("-1S", 30.0)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.http_status == 504


@pytest.mark.parametrize(
    "value", ["1.5S", "1s", "S", "\u0663S", "1 S", "9223372036854775808n", "0x5S"]
)
def test_invalid_values_are_invalid_argument(value: str) -> None:
    with pytest.raises(GatewayError) as caught:
        grpc_timeout(value, 30.0)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.http_status == 400
    assert "Grpc-Timeout" in caught.value.message


@given(st.text(max_size=12))
def test_any_header_is_a_bounded_positive_deadline_or_400(value: str) -> None:
    try:
        seconds = grpc_timeout(value, 30.0)
    except GatewayError as error:
        assert error.http_status in (400, 504)
    else:
        assert 0 < seconds <= MAX_TIMEOUT_SECONDS
