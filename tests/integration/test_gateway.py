"""The REST shim over real HTTP, in front of real gRPC servers.

Two backends: the Balances server over real chains (the documented endpoints),
and a server for the test-only ``gwroute.v1`` proto, compiled at test time,
which the gateway routes from its annotations with no gateway change.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from grpc import aio

from balances.v1 import balances_pb2
from service.gateway.app import build_gateway_app
from service.gateway.inprocess import InProcessServer
from service.gateway.limits import RestLimits
from service.gateway.routes import routes_of
from service.grpc_server import create_server
from tests.support.expected import (
    DOCUMENTED_CUSTOMER,
    DOCUMENTED_WALLET,
    assert_documented_shape,
    expected_balances,
)
from tests.support.gwroute import echo_servicer, gwroute_modules
from tests.support.openapi_checks import assert_valid, error_schema, ok_schema
from tests.support.rest import Gateway, serve_gateway
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LIMITS = RestLimits(max_body_bytes=4096, body_read_timeout_seconds=1.0)


@pytest_asyncio.fixture(loop_scope="session", params=["channel", "in_process"])
async def balances_gateway(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """The shim over a channel (the sidecar), and calling the server's handlers (``serve``).

    In process, the handlers are those of a second server over the same service, built
    as ``balances serve`` builds its own and never started: nothing reaches its port.
    """
    routes = routes_of(balances_pb2.DESCRIPTOR.services_by_name.values())
    in_process = None
    if request.param == "in_process":
        in_process = InProcessServer()
        server, _, _ = create_server(stack.service, "127.0.0.1:0", in_process=in_process)
    runner, base = await serve_gateway(
        build_gateway_app(stack.channel, routes, LIMITS, title="Balances", in_process=in_process)
    )
    async with aiohttp.ClientSession() as http:
        yield Gateway(base, http, {"X-API-Key": stack.api_key})
    await runner.cleanup()
    if in_process is not None:
        await server.stop(None)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def echo_target() -> AsyncIterator[str]:
    _pb, pb_grpc = gwroute_modules()
    server = aio.server()
    pb_grpc.add_EchoServiceServicer_to_server(echo_servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest_asyncio.fixture(loop_scope="session")
async def echo_gateway(echo_target: str) -> AsyncIterator[Gateway]:
    pb, _ = gwroute_modules()
    channel = aio.insecure_channel(echo_target)
    routes = routes_of(pb.DESCRIPTOR.services_by_name.values())
    runner, base = await serve_gateway(build_gateway_app(channel, routes, LIMITS, title="Echo"))
    async with aiohttp.ClientSession() as http:
        yield Gateway(base, http)
    await runner.cleanup()
    await channel.close()


# --- the documented endpoints ---------------------------------------------------------


async def test_wallet_balance_over_rest(balances_gateway: Gateway, stack: Stack) -> None:
    status, body, headers = await balances_gateway.request(
        "GET", "/v1/wallets/wal_alice_polygon/balance"
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert_documented_shape(body, DOCUMENTED_WALLET)
    assert set(body) == {"walletId", "network", "balances", "lastUpdated", "blockNumber"}
    assert body["balances"] == expected_balances(stack.world, "wal_alice_polygon")
    assert headers["X-Request-Id"]


async def test_customer_balances_over_rest(balances_gateway: Gateway, stack: Stack) -> None:
    status, body, _ = await balances_gateway.request("GET", "/v1/customers/cus_alice/balances")
    assert status == 200
    assert_documented_shape(body, DOCUMENTED_CUSTOMER)
    assert body["totalBalance"] == {"amount": "4106.99", "currency": "USD"}
    for wallet in body["wallets"]:
        assert wallet["balances"] == expected_balances(stack.world, wallet["walletId"])


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/wallets/wal_nobody/balance", 404, 5),
        ("/v1/wallets/not-an-id/balance", 400, 3),
        ("/v1/customers/cus_nobody/balances", 404, 5),
        ("/v1/customers/bad%20id/balances", 400, 3),
        ("/v1/wallets//balance", 400, 3),
        ("/v1/wallets/wal_alice_polygon/balance/", 404, 5),
        ("/v1/wallets", 404, 5),
        ("/nothing/here", 404, 5),
    ],
)
async def test_error_statuses_and_body_shape(
    balances_gateway: Gateway, stack: Stack, path: str, status: int, code: int
) -> None:
    got, body, headers = await balances_gateway.request("GET", path)
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code and body["message"] and body["details"] == []
    assert sum(sum(p.counts.values()) for p in stack.proxies.values()) == 0


async def test_empty_path_variable_is_rejected_before_any_lookup(
    balances_gateway: Gateway,
) -> None:
    status, body, _ = await balances_gateway.request("GET", "/v1/wallets//balance")
    assert status == 400
    assert body["message"] == "path variable wallet_id is empty"


async def test_wrong_method_is_405_with_allow(balances_gateway: Gateway) -> None:
    status, body, headers = await balances_gateway.request(
        "POST", "/v1/wallets/wal_alice_polygon/balance", json={}
    )
    assert status == 405
    assert headers["Allow"] == "GET"
    assert body["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]


async def test_query_cannot_override_a_path_variable(balances_gateway: Gateway) -> None:
    status, body, _ = await balances_gateway.request(
        "GET", "/v1/wallets/wal_alice_polygon/balance?wallet_id=wal_bob_polygon&walletId=x&junk=1"
    )
    assert status == 200
    assert body["walletId"] == "wal_alice_polygon"


async def test_request_id_is_forwarded_and_returned(balances_gateway: Gateway) -> None:
    status, _, headers = await balances_gateway.request(
        "GET", "/v1/wallets/wal_nobody/balance", headers={"X-Request-Id": "rest-42"}
    )
    assert status == 404
    assert headers["X-Request-Id"] == "rest-42"
    assert headers["Grpc-Metadata-x-request-id"] == "rest-42"  # echoed by the server's trailers


@pytest.mark.parametrize("given", ["client id with spaces", "x" * 65])
async def test_one_request_id_names_the_call_in_header_trailer_and_error_body(
    balances_gateway: Gateway, stack: Stack, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """Bug 2: the gateway echoed any printable X-Request-Id while the server replaced one
    that failed its pattern, so the header and the error body named different IDs."""

    async def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(stack.service.readers["polygon"], "snapshot", boom)
    status, body, headers = await balances_gateway.request(
        "GET", "/v1/wallets/wal_bob_polygon/balance", headers={"X-Request-Id": given}
    )
    assert status == 500
    request_id = headers["X-Request-Id"]
    assert body["message"] == f"internal error (request id {request_id})"
    assert headers["Grpc-Metadata-x-request-id"] == request_id
    assert request_id != given  # not well-formed: replaced, the same way on both sides


async def test_deadline_from_grpc_timeout_header(balances_gateway: Gateway, stack: Stack) -> None:
    stack.proxies["polygon"].delay = 3.0
    status, body, _ = await balances_gateway.request(
        "GET", "/v1/wallets/wal_bob_polygon/balance", headers={"Grpc-Timeout": "200m"}
    )
    stack.proxies["polygon"].delay = 0.0
    assert status == 504
    assert body["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


@pytest.mark.parametrize("value", ["", "soon", "10", "1s", "123456789S", "-1S", "1.5S"])
async def test_invalid_grpc_timeout_is_400(balances_gateway: Gateway, value: str) -> None:
    status, body, _ = await balances_gateway.request(
        "GET", "/v1/wallets/wal_bob_polygon/balance", headers={"Grpc-Timeout": value}
    )
    assert status == 400
    assert "Grpc-Timeout" in body["message"]


# --- generic routing, on the test-only proto ----------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status"),
    [
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DATA_LOSS, 500),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
    ],
)
async def test_status_mapping_table(
    echo_gateway: Gateway, code: grpc.StatusCode, http_status: int
) -> None:
    status, body, headers = await echo_gateway.request("DELETE", f"/v1/fail/{code.value[0]}")
    assert status == http_status
    assert body["code"] == code.value[0]
    assert body["message"] == f"failed with {code.name}"
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "TEST_FAILURE",
            "domain": "gwroute.test",
            "metadata": {"code": code.name},
        }
    ]
    assert ("WWW-Authenticate" in headers) == (code == grpc.StatusCode.UNAUTHENTICATED)


async def test_test_only_rpc_is_routed_with_path_query_and_metadata(echo_gateway: Gateway) -> None:
    status, body, headers = await echo_gateway.request(
        "GET",
        "/v1/echo/items/a%20b?tags=x&tags=y&inner.note=hi&inner.count=3&bigNumber=9007199254740993"
        "&flag=true&color=COLOR_BLUE&at=2024-01-15T10:30:00Z&unknown=ignored",
        headers={
            "X-API-Key": "key-1",
            "Authorization": "Bearer t",
            "Grpc-Metadata-Tenant-Hint": "abc",
            "X-Forwarded-For": "10.0.0.1",
        },
    )
    assert status == 200, body
    request = body["request"]
    assert request["name"] == "items/a b"
    assert request["tags"] == ["x", "y"]
    assert request["inner"] == {"note": "hi", "count": 3}
    assert request["bigNumber"] == "9007199254740993"
    assert request["flag"] is True and request["color"] == "COLOR_BLUE"
    assert request["at"] == "2024-01-15T10:30:00Z"
    metadata = body["metadata"]
    assert metadata["x-api-key"] == "key-1"
    assert metadata["authorization"] == "Bearer t"
    assert metadata["tenant-hint"] == "abc"
    assert metadata["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert metadata["x-request-id"] == headers["X-Request-Id"]
    assert body["empty"] == []
    assert headers["Grpc-Metadata-x-echo"] == "yes"
    assert headers["Grpc-Metadata-x-echo-trailer"] == "done"


async def test_query_names_may_be_proto_or_json(echo_gateway: Gateway) -> None:
    status, body, _ = await echo_gateway.request("GET", "/v1/echo/items/1?big_number=5")
    assert status == 200 and body["request"]["bigNumber"] == "5"


async def test_body_star_and_body_field_and_response_body(echo_gateway: Gateway) -> None:
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo", json={"name": "items/z", "labels": {"a": "1"}, "surprise": True}
    )
    assert status == 200
    assert body["request"]["name"] == "items/z" and body["request"]["labels"] == {"a": "1"}

    status, body, _ = await echo_gateway.request(
        "PATCH", "/v1/echo/items/q/inner?tags=t", json={"note": "n", "count": 2}
    )
    assert status == 200
    assert body["request"] == {
        "name": "items/q", "tags": ["t"], "inner": {"note": "n", "count": 2},
        "bigNumber": "0", "flag": False, "color": "COLOR_UNSPECIFIED", "labels": {},
    }  # fmt: skip

    status, body, _ = await echo_gateway.request("GET", "/v1/echo/items/v:tags?tags=only")
    assert status == 200
    assert body["name"] == "items/v" and body["tags"] == ["only"]  # response_body: the request


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("flag=true&flag=false", "flag takes one value"),
        ("inner.count=abc", "inner.count"),
        ("inner.count=99999999999", "inner.count"),
        ("color=PURPLE", "color"),
        ("flag=yes", "flag"),
        ("at=yesterday", "at"),
    ],
)
async def test_bad_query_values_are_400(echo_gateway: Gateway, query: str, fragment: str) -> None:
    status, body, _ = await echo_gateway.request("GET", f"/v1/echo/items/1?{query}")
    assert status == 400
    assert body["code"] == 3 and fragment in body["message"]


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b'{"labels": "not a map"}', b"[1, 2]", b'{"bigNumber": "x"}', b"null", b'"s"'],
)
async def test_malformed_body_is_400(echo_gateway: Gateway, payload: bytes) -> None:
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo", data=payload, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert body["code"] == 3


async def test_oversized_body_is_413(echo_gateway: Gateway) -> None:
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo", json={"name": "x" * (LIMITS.max_body_bytes + 1)}
    )
    assert status == 413
    assert set(body) == {"code", "message", "details"}


async def test_slow_body_is_cut_off(echo_gateway: Gateway) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"name": '
        await asyncio.sleep(LIMITS.body_read_timeout_seconds + 1)
        yield b'"late"}'

    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo", data=trickle(), headers={"Content-Type": "application/json"}
    )
    assert status == 408
    assert body["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_unannotated_rpc_has_no_route(echo_gateway: Gateway) -> None:
    status, _, _ = await echo_gateway.request("GET", "/gwroute.v1.EchoService/Unrouted")
    assert status == 404


async def test_reserved_or_binary_metadata_headers_are_rejected(echo_gateway: Gateway) -> None:
    for header in ("Grpc-Metadata-grpc-timeout", "Grpc-Metadata-x-bin"):
        status, body, _ = await echo_gateway.request(
            "GET", "/v1/echo/items/1", headers={header: "1"}
        )
        assert status == 400, header
        assert "not forwardable" in body["message"]


async def test_every_balances_route_answers_json_that_conforms_to_openapi(
    balances_gateway: Gateway,
) -> None:
    """Fetched over HTTP from the live gateway: the document and the bodies it describes."""
    status, document, _ = await balances_gateway.request("GET", "/openapi.json")
    assert status == 200
    cases = [
        ("/v1/wallets/{walletId}/balance", "/v1/wallets/wal_alice_polygon/balance", 200),
        ("/v1/wallets/{walletId}/balance", "/v1/wallets/wal_nobody/balance", 404),
        ("/v1/wallets/{walletId}/balance", "/v1/wallets/bad/balance", 400),
        ("/v1/customers/{customerId}/balances", "/v1/customers/cus_alice/balances", 200),
        ("/v1/customers/{customerId}/balances", "/v1/customers/cus_bob/balances", 200),
        ("/v1/customers/{customerId}/balances", "/v1/customers/cus_nobody/balances", 404),
        # Watch streams failing before their first message answer an ordinary error.
        ("/v1/wallets/{walletId}/balance:watch", "/v1/wallets/wal_nobody/balance:watch", 404),
        ("/v1/wallets/{walletId}/balance:watch", "/v1/wallets/bad/balance:watch", 400),
        ("/v1/customers/{customerId}/balances:watch", "/v1/customers/cus_x/balances:watch", 404),
    ]
    streams = [
        ("/v1/wallets/{walletId}/balance:watch", "/v1/wallets/wal_alice_polygon/balance:watch"),
        ("/v1/customers/{customerId}/balances:watch", "/v1/customers/cus_alice/balances:watch"),
    ]
    assert {template for template, _, _ in cases} == set(document["paths"])
    for template, path, expected in cases:
        status, body, _ = await balances_gateway.request("GET", path)
        assert status == expected, path
        schema = (ok_schema if status == 200 else error_schema)(document, template)
        assert_valid(document, schema, body)
    for template, path in streams:  # newline-delimited JSON: each line is a stream result
        async with balances_gateway.http.get(
            balances_gateway.base + path, headers=balances_gateway.default_headers
        ) as response:
            assert response.status == 200, path
            line = await asyncio.wait_for(response.content.readline(), 5)
            body = json.loads(line)
            assert set(body) == {"result"} and body["result"]["initial"] is True
            assert_valid(document, ok_schema(document, template), body)


async def test_an_unreachable_grpc_server_is_503_without_internal_addresses() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    channel = aio.insecure_channel(dead)
    routes = routes_of(balances_pb2.DESCRIPTOR.services_by_name.values())
    runner, base = await serve_gateway(build_gateway_app(channel, routes, LIMITS, title="B"))
    try:
        async with aiohttp.ClientSession() as http:
            gateway = Gateway(base, http)
            status, body, _ = await gateway.request(
                "GET", "/v1/wallets/wal_a/balance", headers={"Grpc-Timeout": "2S"}
            )
    finally:
        await runner.cleanup()
        await channel.close()
    assert status == 503
    assert body == {"code": 14, "message": "the service is unavailable", "details": []}
