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
from yarl import URL

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
from tests.support.rest import Gateway, raw_request, serve_gateway
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
    assert body["code"] == code and body["message"] and isinstance(body["details"], list)
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
    # The server's trailer (x-request-id) is withheld from a client that did not send
    # "TE: trailers", as grpc-gateway does (changed: it used to be a Grpc-Metadata header).
    assert not [name for name in headers if name.lower().startswith(("grpc-metadata-", "grpc-t"))]


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
    reply = await raw_request(
        balances_gateway.base,
        "GET",
        "/v1/wallets/wal_bob_polygon/balance",
        {**balances_gateway.default_headers, "X-Request-Id": given, "TE": "trailers"},
    )
    assert reply.status == 500
    # The server's trailer names the same ID (changed: now an HTTP trailer, as grpc-gateway).
    assert ("Grpc-Trailer-X-Request-Id", reply.header("X-Request-Id")) in reply.trailers
    assert request_id != given  # not well-formed: replaced, the same way on both sides


async def test_deadline_from_grpc_timeout_header(balances_gateway: Gateway, stack: Stack) -> None:
    stack.proxies["polygon"].delay = 3.0
    status, body, _ = await balances_gateway.request(
        "GET", "/v1/wallets/wal_bob_polygon/balance", headers={"Grpc-Timeout": "200m"}
    )
    stack.proxies["polygon"].delay = 0.0
    assert status == 504
    assert body["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


@pytest.mark.parametrize("value", ["soon", "10", "1s", "1.5S", "S", "99999999999999999999S"])
async def test_invalid_grpc_timeout_is_400(balances_gateway: Gateway, value: str) -> None:
    """grpc-gateway's timeoutDecode: an int64 and a unit (changed: "", "-1S" and 9+ digits
    were 400 here; see test_grpc_timeout_as_grpc_gateway_reads_it)."""
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
    assert metadata["grpcgateway-authorization"] == "Bearer t"  # a permanent header
    assert metadata["grpcgateway-user-agent"].startswith("Python")
    assert metadata["tenant-hint"] == "abc"
    assert metadata["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert metadata["x-forwarded-host"] == echo_gateway.base.removeprefix("http://")
    assert metadata["x-request-id"] == headers["X-Request-Id"]
    assert body["empty"] == []
    assert headers["Grpc-Metadata-X-Echo"] == "yes"
    assert "Grpc-Metadata-X-Echo-Trailer" not in headers  # no "TE: trailers": no trailers


async def test_unset_message_fields_are_omitted_a_documented_deviation(
    echo_gateway: Gateway,
) -> None:
    """grpc-gateway (protojson EmitUnpopulated) prints an unset message field as null; the
    shim omits it, while unset scalars are printed with their zero values as both do."""
    status, body, _ = await echo_gateway.request("GET", "/v1/echo/items/1")
    assert status == 200
    request = body["request"]
    assert "inner" not in request and "at" not in request  # grpc-gateway: null
    assert request["flag"] is False and request["name"] == "items/1"


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
        ("flag=true&flag=false", 'too many values for field "flag"'),
        ("inner.count=abc", 'parsing field "count"'),
        ("inner.count=99999999999", 'parsing field "count"'),
        ("inner.count=1_0", 'parsing field "count"'),
        ("inner.count=%201", 'parsing field "count"'),
        ("inner.count=0x10", 'parsing field "count"'),  # base 10 in a query
        ("bigNumber=1.5", 'parsing field "big_number"'),
        ("color=PURPLE", 'parsing field "color"'),
        ("color=7", 'parsing field "color"'),  # a number no value has
        ("flag=yes", 'parsing field "flag"'),
        ("flag=", 'parsing field "flag"'),
        ("at=yesterday", 'parsing field "at"'),
        ("inner=x", "unsupported message type"),  # a message takes no value
        ("flag.x=1", "is not a message"),  # a path through a non-message field
        ("tags.x=1", "is not a message"),
        ("labels=x", "map"),  # a map entry needs labels[key]=value
        ("name=%zz", "invalid URL escape"),
        ("flag=true;tags=x", "semicolon"),
    ],
)
async def test_bad_query_values_are_400(echo_gateway: Gateway, query: str, fragment: str) -> None:
    # Sent as written: aiohttp's client would re-quote a bad escape ("%zz" -> "%25zz").
    reply = await raw_request(echo_gateway.base, "GET", f"/v1/echo/items/1?{query}", {})
    assert reply.status == 400
    body = json.loads(reply.body)
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


async def test_metadata_headers_as_grpc_gateway_forwards_them(echo_gateway: Gateway) -> None:
    """Changed: reserved and "-bin" names were 400 here.  grpc-gateway skips names and
    values that cannot be metadata (and grpc-go drops reserved ones), and base64-decodes
    a "-Bin" header into binary metadata."""
    status, body, _ = await echo_gateway.request(
        "GET",
        "/v1/echo/items/1",
        headers={
            "Grpc-Metadata-grpc-timeout": "1S",
            "Grpc-Metadata-Te": "trailers",
            "Grpc-Metadata-X-Trace-Bin": "AQID",
            "Grpc-Metadata-X-Raw-Bin": "AQI",  # unpadded: decoded too
            "Grpc-Metadata-X-Latin": "caf\u00e9",
            "Accept": "application/json",
            "X-Not-Forwarded": "1",
        },
    )
    assert status == 200, body
    metadata = body["metadata"]
    assert metadata["x-trace-bin"] == "bin:010203"
    assert metadata["x-raw-bin"] == "bin:0102"
    assert metadata["grpcgateway-accept"] == "application/json"
    assert "te" not in metadata and "grpc-timeout" not in metadata
    assert not {"x-latin", "x-not-forwarded"} & set(metadata)
    status, body, _ = await echo_gateway.request(
        "GET", "/v1/echo/items/1", headers={"Grpc-Metadata-X-Trace-Bin": "not base64!"}
    )
    assert status == 400 and "invalid binary header" in body["message"]


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
        # A watch failing before its first message: the error's status, one {"error"} line.
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
    assert (body["code"], body["message"]) == (14, "the service is unavailable")


# --- grpc-gateway conformance (README: "Conformance with grpc-gateway") ----------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_own_method_routes_are_tried_before_another_methods(
    balances_gateway: Gateway,
) -> None:
    """A GET of .../wallets/import is GetWallet of a wallet "import" (changed: it was 405)."""
    status, body, _ = await balances_gateway.request(
        "GET", "/v1/customers/cus_alice/wallets/import"
    )
    assert status in (400, 404) and body["code"] in (3, 5), body
    assert body["code"] != grpc.StatusCode.UNIMPLEMENTED.value[0]


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT"])
async def test_other_methods_on_a_known_path_are_405(
    balances_gateway: Gateway, method: str
) -> None:
    status, _, headers = await balances_gateway.request(
        method, "/v1/wallets/wal_alice_polygon/balance"
    )
    assert status == 405 and headers["Allow"] == "GET"


async def test_a_form_post_to_a_get_route_is_served_as_the_get(
    balances_gateway: Gateway, stack: Stack
) -> None:
    status, body, _ = await balances_gateway.request(
        "POST", "/v1/wallets/wal_alice_polygon/balance", data=b"", headers=FORM
    )
    assert status == 200, body
    assert body["balances"] == expected_balances(stack.world, "wal_alice_polygon")
    # Only that exact Content-Type: with a charset it is an ordinary POST.
    status, _, _ = await balances_gateway.request(
        "POST",
        "/v1/wallets/wal_alice_polygon/balance",
        data=b"",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert status == 405


async def test_x_http_method_override_on_a_form_post(echo_gateway: Gateway) -> None:
    headers = {**FORM, "X-HTTP-Method-Override": "get"}
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo/items/a?tags=from-query", data=b"tags=from-form&flag=T", headers=headers
    )
    assert status == 200, body
    assert body["request"]["tags"] == ["from-form", "from-query"]  # the form's first
    assert body["request"]["flag"] is True
    # Any method, not only GET: here DELETE /v1/fail/{code}.
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/fail/5", data=b"", headers={**FORM, "X-HTTP-Method-Override": "DELETE"}
    )
    assert status == 404 and body["message"] == "failed with NOT_FOUND"
    # Without the form Content-Type the header means nothing.
    status, _, _ = await echo_gateway.request(
        "POST", "/v1/fail/5", json={}, headers={"X-HTTP-Method-Override": "DELETE"}
    )
    assert status == 405
    # A form that does not parse is 400.
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo/items/a", data=b"tags=%zz", headers=FORM
    )
    assert status == 400 and "invalid URL escape" in body["message"]
    # Without the header, a form POST to a path only a GET route has is that GET: the
    # form's fields are query parameters.
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo/items/a", data=b"inner.count=3&color=1", headers=FORM
    )
    assert status == 200, body
    assert body["request"]["inner"]["count"] == 3 and body["request"]["color"] == "COLOR_RED"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/echo/items%2Fa", 200),  # %2F is a "/" before routing: {name=items/*} matches
        ("/v1/echo/items/a%2Fb", 404),  # ...so here there is one segment too many
        ("/v1/%65cho/items/a", 200),  # an encoded literal matches
        ("/v1/echo/items/v%3Atags", 200),  # an encoded verb too
        ("/v1/echo/items/a%zz", 400),  # a bad escape
    ],
)
async def test_the_path_is_decoded_before_routing(
    echo_gateway: Gateway, path: str, status: int
) -> None:
    reply = await raw_request(echo_gateway.base, "GET", path, {})  # not re-quoted
    assert reply.status == status, reply.body


async def test_integer_path_variables_parse_in_go_syntax(echo_gateway: Gateway) -> None:
    for path in ("/v1/fail/0x5", "/v1/fail/0b101", "/v1/fail/+5", "/v1/fail/5"):
        status, body, _ = await echo_gateway.request("DELETE", path)
        assert (status, body["code"]) == (404, 5), path
    status, body, _ = await echo_gateway.request("DELETE", "/v1/fail/five")
    assert status == 400 and "type mismatch, parameter: code" in body["message"]


@pytest.mark.parametrize(
    ("query", "field", "expected"),
    [
        ("flag=T", "flag", True),
        ("flag=True", "flag", True),
        ("flag=1", "flag", True),
        ("flag=F", "flag", False),
        ("inner.count=%2B7", "inner", {"note": "", "count": 7}),
        ("inner.count=007", "inner", {"note": "", "count": 7}),
        ("inner.junk=1", "inner", {"note": "", "count": 0}),  # unknown leaf: the parent is set
        ("color=2", "color", "COLOR_BLUE"),
        ("color=COLOR_RED", "color", "COLOR_RED"),
        ("labels[a]=1&labels[b]=2", "labels", {"a": "1", "b": "2"}),
        ("tags=a&tags=b", "tags", ["a", "b"]),
        ("tags[x]=y", "tags", ["x", "y"]),  # grpc-gateway's bracket rule, literally
        ("bigNumber=-9223372036854775808", "bigNumber", "-9223372036854775808"),
        ("at=2024-01-15T10:30:00.5Z", "at", "2024-01-15T10:30:00.500Z"),
        ("junk=1&junk.x=1&inner.junk.x=1", "bigNumber", "0"),  # unknown names are ignored
    ],
)
async def test_query_values_parse_as_grpc_gateway_parses_them(
    echo_gateway: Gateway, query: str, field: str, expected: Any
) -> None:
    status, body, _ = await echo_gateway.request("GET", f"/v1/echo/items/1?{query}")
    assert status == 200, body
    assert body["request"][field] == expected


async def test_the_same_field_under_its_two_names_is_not_repeated(echo_gateway: Gateway) -> None:
    """url.Values groups by the name as written: big_number and bigNumber are two names."""
    status, body, _ = await echo_gateway.request("GET", "/v1/echo/items/1?big_number=1&bigNumber=2")
    assert status == 200 and body["request"]["bigNumber"] in ("1", "2")


async def test_a_route_that_reads_no_query_never_parses_it(balances_gateway: Gateway) -> None:
    # A watch: its request has no field but the path's (the unary reads take atBlock/atTime).
    # Its status is all that is needed; the stream itself is not read.
    async with balances_gateway.http.get(
        URL(
            balances_gateway.base + "/v1/wallets/wal_alice_polygon/balance:watch?x=%zz;y",
            encoded=True,
        ),
        headers=balances_gateway.default_headers,
    ) as response:
        assert response.status == 200
    # A route that reads the query refuses the same: test_bad_query_values_are_400.


async def test_a_body_star_route_ignores_the_query(echo_gateway: Gateway) -> None:
    status, body, _ = await echo_gateway.request(
        "POST", "/v1/echo?flag=notabool&tags=q", json={"name": "items/b"}
    )
    assert status == 200 and body["request"]["tags"] == [] and body["request"]["flag"] is False


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b'{"name": "a", "name": "b"}', 400),  # protojson: a duplicate field
        (b'{"name": "a", "labels": {"k": "1", "k": "2"}}', 400),  # ...or map key
        (b'{"name": "a", "inner": {"note": "x", "note": "y"}}', 400),
        (b'{"name": "a", "junk": 1, "junk": 2}', 200),  # unknown fields are skipped, twice too
        (b'{"name": "a"} trailing bytes', 200),  # json.Decoder reads one value
        (b'{"name": "a"}{"name": "b"}', 200),
        (b"", 200),  # io.EOF: an empty message
        (b"   ", 200),
        (b'{"color": "COLOR_PURPLE"}', 200),  # an unknown enum name is discarded
        (b'{"inner": {"count": NaN}}', 400),
    ],
)
async def test_json_bodies_as_protojson_reads_them(
    echo_gateway: Gateway, payload: bytes, status: int
) -> None:
    got, body, _ = await echo_gateway.request(
        "POST", "/v1/echo", data=payload, headers={"Content-Type": "text/plain"}
    )
    assert got == status, body
    if status == 200:
        assert body["request"]["name"] in ("a", "")
        assert body["request"]["color"] == "COLOR_UNSPECIFIED"
    else:
        assert body["code"] == 3


async def test_a_body_on_a_get_is_ignored(echo_gateway: Gateway) -> None:
    status, body, _ = await echo_gateway.request(
        "GET", "/v1/echo/items/1", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 200 and body["request"]["name"] == "items/1"


async def test_grpc_timeout_as_grpc_gateway_reads_it(
    balances_gateway: Gateway, stack: Stack
) -> None:
    for value in ("", "0S", "+2S", "123456789S", "9223372036854775807n"):
        status, body, _ = await balances_gateway.request(
            "GET", "/v1/wallets/wal_alice_polygon/balance", headers={"Grpc-Timeout": value}
        )
        assert status == 200, (value, body)
    before = sum(sum(p.counts.values()) for p in stack.proxies.values())
    status, body, _ = await balances_gateway.request(
        "GET", "/v1/wallets/wal_alice_polygon/balance", headers={"Grpc-Timeout": "-1S"}
    )
    assert (status, body["code"]) == (504, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    after = sum(sum(p.counts.values()) for p in stack.proxies.values())
    assert after == before  # expired already: nothing was read


async def test_responses_are_application_json_without_a_charset(
    balances_gateway: Gateway,
) -> None:
    for path in ("/v1/wallets/wal_alice_polygon/balance", "/v1/wallets/wal_nobody/balance"):
        _, _, headers = await balances_gateway.request("GET", path)
        assert headers["Content-Type"] == "application/json", path


@pytest.mark.parametrize("path", ["/v1/wallets/wal_alice_polygon/balance", "/v1/wallets/x/balance"])
async def test_trailers_go_to_a_client_that_sends_te_trailers(
    balances_gateway: Gateway, path: str
) -> None:
    """grpc-gateway: with "TE: trailers", the call's trailers as HTTP/1.1 trailer fields
    Grpc-Trailer-<Name>, announced in a Trailer header; success and error alike."""
    headers = {**balances_gateway.default_headers, "X-Request-Id": "te-1"}
    reply = await raw_request(balances_gateway.base, "GET", path, {**headers, "TE": "trailers"})
    assert reply.header("Transfer-Encoding") == "chunked"
    assert reply.header("Trailer") == "Grpc-Trailer-X-Request-Id"
    assert reply.trailers == [("Grpc-Trailer-X-Request-Id", "te-1")]
    assert json.loads(reply.body)  # the body is whole before the trailers
    plain = await raw_request(balances_gateway.base, "GET", path, headers)
    assert plain.status == reply.status and json.loads(plain.body) == json.loads(reply.body)
    assert plain.trailers == [] and plain.header("Trailer") is None
    assert not [k for k, _ in plain.headers if k.lower().startswith("grpc-")]


async def test_a_watch_failing_before_its_first_message_is_a_one_line_stream(
    balances_gateway: Gateway,
) -> None:
    """Changed: it was an ordinary error body.  grpc-gateway reads the failure from the
    stream: the error's HTTP status, and one {"error": ...} line."""
    async with balances_gateway.http.get(
        balances_gateway.base + "/v1/wallets/wal_nobody/balance:watch",
        headers=balances_gateway.default_headers,
    ) as response:
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/json"
        text = await response.text()
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    assert set(line) == {"error"}
    assert line["error"]["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert set(line["error"]) == {"code", "message", "details"}
