"""Deeply nested JSON from outside is refused before the C decoder can crash on it.

A library that raises the recursion limit (py_ecc, imported by web3, sets
100000) makes ``json.loads("[" * 1_000_000)`` overflow the C stack and kill the
process; these tests run with the limit raised so.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from balances.v1 import wallets_pb2
from service.bounded_json import loads_bounded
from service.errors import TooDeep
from service.gateway.errors import GatewayError
from service.gateway.routes import RouteMatch, RouteTable, routes_of
from service.gateway.transcode import build_request

DEEP = "[" * 1_000_000


@pytest.fixture(autouse=True)
def raised_recursion_limit() -> Iterator[None]:
    """As py_ecc sets it: the C decoder would crash on ``DEEP`` rather than raise."""
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


def test_deep_nesting_is_refused_and_shallow_json_parses() -> None:
    with pytest.raises(TooDeep):
        loads_bounded(DEEP)
    with pytest.raises(TooDeep):
        loads_bounded(b'{"a": ' * 40 + b"1" + b"}" * 40)
    assert loads_bounded('{"a": [1, {"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}') == {
        "a": [1, {"b": "[" * 36}]
    }
    assert loads_bounded("[" * 32 + "]" * 32) is not None


def test_a_rest_body_nested_a_million_deep_is_a_400() -> None:
    table = RouteTable(routes_of(wallets_pb2.DESCRIPTOR.services_by_name.values()))
    found = table.find("POST", "/v1/customers/cus_a/wallets/import")
    assert isinstance(found, RouteMatch)
    with pytest.raises(GatewayError) as caught:
        build_request(found, [], DEEP.encode())
    assert caught.value.http_status == 400
    assert "nested deeper than 32 levels" in caught.value.message
