"""Tenant isolation and API-key authentication, over gRPC and REST, on a real server.

Tenant A is "default" (the demo wallets, ``stack.api_key``); tenant B is
"other", whose customer cus_other holds the very address of A's
wal_alice_polygon.  Each tenant's wallets and customers must look to the
other exactly like IDs that do not exist.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from balances.v1 import balances_pb2
from balances.v1 import wallets_pb2 as pb
from service.auth.keys import new_api_key
from service.errors import Unauthenticated
from service.gateway.errors import WWW_AUTHENTICATE
from tests.support.rest import Gateway
from tests.support.stack import Stack, keyed_channel
from tests.support.tenancy_kit import (
    Stubs,
    captured_logs,
    key_id,
    new_key,
    no_key_material_logged,
    outcome,
    remember,
    served_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAUTHENTICATED_MESSAGE = str(Unauthenticated())
ALICE_POLYGON = "0xd3e0000000000000000000000000000000000001"  # as A registered it, lowercased
ALICE_ETHEREUM = "0xd3E0000000000000000000000000000000000002"
BOB_POLYGON = "0xD3E0000000000000000000000000000000000003"


@dataclass
class Tenant:
    name: str
    key: str
    api: Stubs
    customer_id: str  # a customer only this tenant has
    wallet_id: str  # one of that customer's wallets
    wallet_ids: tuple[str, ...]  # every wallet this tenant has


@pytest.fixture(autouse=True)
def no_api_key_in_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    with no_key_material_logged(request):
        yield


@pytest_asyncio.fixture(loop_scope="session")
async def tenants(stack: Stack) -> AsyncIterator[tuple[Tenant, Tenant]]:
    other_key = await new_key(stack, "other")
    async with keyed_channel(stack.target, other_key) as channel:
        b_api = Stubs(channel)
        imported = await b_api.wallets.ImportWallet(
            pb.ImportWalletRequest(
                customer_id="cus_other", network="polygon", address=ALICE_POLYGON
            )
        )
        assert imported.created
        b_wallet = imported.wallet.wallet_id
        a = Tenant(
            "default",
            stack.api_key,
            Stubs(stack.keyed),
            "cus_alice",
            "wal_alice_polygon",
            ("wal_alice_polygon", "wal_alice_ethereum", "wal_bob_polygon"),
        )
        b = Tenant("other", other_key, b_api, "cus_other", b_wallet, (b_wallet,))
        yield a, b


@pytest_asyncio.fixture(loop_scope="session")
async def rest(stack: Stack) -> AsyncIterator[Gateway]:
    async with served_gateway(stack) as gateway:  # each request brings its own key
        yield gateway


def lookalike(an_id: str) -> str:
    """An ID of the same shape and length that nobody has."""
    return an_id[:4] + "z" * (len(an_id) - 4)


def redacted(text: str, customer_id: str, wallet_id: str) -> str:
    return text.replace(wallet_id, "<wallet>").replace(customer_id, "<customer>")


Call = Callable[[Stubs, str, str], Awaitable[Any]]

GRPC_CALLS: dict[str, Call] = {
    "GetWalletBalance": lambda api, c, w: api.balances.GetWalletBalance(
        balances_pb2.GetWalletBalanceRequest(wallet_id=w)
    ),
    "GetCustomerBalances": lambda api, c, w: api.balances.GetCustomerBalances(
        balances_pb2.GetCustomerBalancesRequest(customer_id=c)
    ),
    "ListWallets": lambda api, c, w: api.wallets.ListWallets(pb.ListWalletsRequest(customer_id=c)),
    "GetWallet": lambda api, c, w: api.wallets.GetWallet(
        pb.GetWalletRequest(customer_id=c, wallet_id=w)
    ),
    "DeleteWallet": lambda api, c, w: api.wallets.DeleteWallet(
        pb.DeleteWalletRequest(customer_id=c, wallet_id=w)
    ),
}

REST_ROUTES = [
    ("GET", "/v1/wallets/{w}/balance"),
    ("GET", "/v1/customers/{c}/balances"),
    ("GET", "/v1/customers/{c}/wallets"),
    ("GET", "/v1/customers/{c}/wallets/{w}"),
    ("DELETE", "/v1/customers/{c}/wallets/{w}"),
]

DIRECTIONS = ["B-on-A", "A-on-B"]


def caller_and_owner(tenants: tuple[Tenant, Tenant], direction: str) -> tuple[Tenant, Tenant]:
    a, b = tenants
    return (b, a) if direction == "B-on-A" else (a, b)


def assert_no_data_of(owner: Tenant, text: str, asked: tuple[str, ...]) -> None:
    """``text`` holds nothing of ``owner``'s but the IDs the caller itself sent."""
    assert "0x" not in text.lower()
    assert "tenant" not in text.lower()
    for wallet_id in owner.wallet_ids:
        assert wallet_id in asked or wallet_id not in text


async def assert_owner_unchanged(owner: Tenant) -> None:
    got = await owner.api.wallets.GetWallet(
        pb.GetWalletRequest(customer_id=owner.customer_id, wallet_id=owner.wallet_id)
    )
    assert got.wallet.wallet_id == owner.wallet_id
    listed = await owner.api.wallets.ListWallets(
        pb.ListWalletsRequest(customer_id=owner.customer_id)
    )
    assert owner.wallet_id in [w.wallet_id for w in listed.wallets]


# --- the isolation matrix ------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("rpc", list(GRPC_CALLS))
async def test_other_tenants_ids_look_unknown_over_grpc(
    tenants: tuple[Tenant, Tenant], direction: str, rpc: str
) -> None:
    caller, owner = caller_and_owner(tenants, direction)
    call = GRPC_CALLS[rpc]
    unknown_c, unknown_w = lookalike(owner.customer_id), lookalike(owner.wallet_id)
    # Their customer and wallet; for wallet calls, our own customer with their wallet too.
    takes_both = rpc in ("GetWallet", "DeleteWallet")
    for customer_id in (owner.customer_id, caller.customer_id)[: 2 if takes_both else 1]:
        code, details, response = await outcome(call(caller.api, customer_id, owner.wallet_id))
        assert (code, response) == (NOT_FOUND, None), (rpc, customer_id)
        unknown_customer = unknown_c if customer_id == owner.customer_id else customer_id
        code_u, details_u, _ = await outcome(call(caller.api, unknown_customer, unknown_w))
        assert code_u == NOT_FOUND
        assert redacted(details, customer_id, owner.wallet_id) == redacted(
            details_u, unknown_customer, unknown_w
        )
        assert_no_data_of(owner, details, (owner.wallet_id,))
    await assert_owner_unchanged(owner)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(("method", "template"), REST_ROUTES)
async def test_other_tenants_ids_look_unknown_over_rest(
    tenants: tuple[Tenant, Tenant], rest: Gateway, direction: str, method: str, template: str
) -> None:
    caller, owner = caller_and_owner(tenants, direction)
    headers = {"X-API-Key": caller.key}

    async def ask(customer_id: str, wallet_id: str) -> tuple[int, Any, Any]:
        path = template.format(c=customer_id, w=wallet_id)
        return await rest.request(method, path, headers=headers)

    status, body, found_headers = await ask(owner.customer_id, owner.wallet_id)
    unknown_c, unknown_w = lookalike(owner.customer_id), lookalike(owner.wallet_id)
    status_u, body_u, headers_u = await ask(unknown_c, unknown_w)
    assert status == status_u == 404
    assert body["code"] == body_u["code"] == NOT_FOUND.value[0]
    # The same details (reason, metadata naming the ID asked for), never the owner's.
    assert body["details"] and redacted(
        json.dumps(body["details"]), owner.customer_id, owner.wallet_id
    ) == redacted(json.dumps(body_u["details"]), unknown_c, unknown_w)
    assert redacted(body["message"], owner.customer_id, owner.wallet_id) == redacted(
        body_u["message"], unknown_c, unknown_w
    )
    assert set(found_headers) == set(headers_u)
    assert found_headers["Content-Length"] == headers_u["Content-Length"]
    assert_no_data_of(owner, str(body), (owner.wallet_id,))
    assert_no_data_of(owner, str(dict(found_headers)), (owner.wallet_id,))
    await assert_owner_unchanged(owner)


async def test_same_address_in_two_tenants_is_two_independent_wallets(
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants
    a_balance = await a.api.balances.GetWalletBalance(
        balances_pb2.GetWalletBalanceRequest(wallet_id=a.wallet_id)
    )
    b_balance = await b.api.balances.GetWalletBalance(
        balances_pb2.GetWalletBalanceRequest(wallet_id=b.wallet_id)
    )
    assert b.wallet_id != a.wallet_id
    assert list(b_balance.balances) == list(a_balance.balances)  # the same chain address
    # Deleting B's wallet leaves A's (same address, same cache entries) alone.
    await b.api.wallets.DeleteWallet(
        pb.DeleteWalletRequest(customer_id=b.customer_id, wallet_id=b.wallet_id)
    )
    assert (
        await a.api.balances.GetWalletBalance(
            balances_pb2.GetWalletBalanceRequest(wallet_id=a.wallet_id)
        )
    ).balances == a_balance.balances
    await assert_owner_unchanged(a)


async def test_importing_another_tenants_customer_id_makes_a_separate_wallet(
    tenants: tuple[Tenant, Tenant], rest: Gateway
) -> None:
    a, b = tenants
    before = await a.api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_alice"))
    # A has ALICE_ETHEREUM for cus_alice and BOB_POLYGON for cus_bob: B can't tell.
    first = await b.api.wallets.ImportWallet(
        pb.ImportWalletRequest(customer_id="cus_alice", network="ethereum", address=ALICE_ETHEREUM)
    )
    assert first.created and first.wallet.wallet_id != "wal_alice_ethereum"
    status, second, _ = await rest.request(
        "POST",
        "/v1/customers/cus_alice/wallets/import",
        json={"network": "polygon", "address": BOB_POLYGON},
        headers={"X-API-Key": b.key},
    )
    assert status == 200 and second["created"] is True
    b_ids = {first.wallet.wallet_id, second["wallet"]["walletId"]}

    after = await a.api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_alice"))
    assert after == before
    a_customer = await a.api.balances.GetCustomerBalances(
        balances_pb2.GetCustomerBalancesRequest(customer_id="cus_alice")
    )
    assert {w.wallet_id for w in a_customer.wallets} == {"wal_alice_polygon", "wal_alice_ethereum"}
    b_listed = await b.api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_alice"))
    assert {w.wallet_id for w in b_listed.wallets} == b_ids
    b_customer = await b.api.balances.GetCustomerBalances(
        balances_pb2.GetCustomerBalancesRequest(customer_id="cus_alice")
    )
    assert {w.wallet_id for w in b_customer.wallets} == b_ids
    for wallet_id in b_ids:
        code, details, _ = await outcome(
            a.api.wallets.GetWallet(
                pb.GetWalletRequest(customer_id="cus_alice", wallet_id=wallet_id)
            )
        )
        assert (code, details) == (NOT_FOUND, f"wallet {wallet_id} not found")
    # Re-importing in A is still idempotent, in B too: each tenant its own wallet.
    again = await a.api.wallets.ImportWallet(
        pb.ImportWalletRequest(customer_id="cus_alice", network="polygon", address=ALICE_POLYGON)
    )
    assert (again.created, again.wallet.wallet_id) == (False, "wal_alice_polygon")


# --- authentication ------------------------------------------------------------------------


@dataclass
class BadCredentials:
    grpc_metadata: tuple[tuple[str, str], ...]
    http_headers: dict[str, str]


async def bad_credentials(stack: Stack, kind: str) -> BadCredentials:
    """One way of not presenting a valid key (the valid one is ``good``)."""
    good = await new_key(stack, "default")
    unknown = new_api_key().plaintext
    wrong_secret = f"bk_{key_id(good)}_{secrets.token_urlsafe(32)}"
    remember(unknown, wrong_secret)
    if kind == "revoked":
        await stack.service.stores.api_keys.revoke_key(key_id(good))
    as_key = {
        "empty": "",
        "unknown-valid-shape": unknown,
        "known-id-wrong-secret": wrong_secret,
        "malformed": "not-a-key",
        "truncated": good[:-1],
        "revoked": good,
        "non-ascii": good[:-1] + "\u00e9",
    }
    if kind == "none":
        return BadCredentials((), {})
    if kind == "authorization-bearer":
        return BadCredentials(
            (("authorization", f"Bearer {good}"),), {"Authorization": f"Bearer {good}"}
        )
    if kind == "x-api-token":
        return BadCredentials((("x-api-token", good),), {"X-Api-Token": good})
    return BadCredentials((("x-api-key", as_key[kind]),), {"X-API-Key": as_key[kind]})


BAD_KINDS = [
    "none",
    "empty",
    "unknown-valid-shape",
    "known-id-wrong-secret",
    "malformed",
    "truncated",
    "revoked",
    "non-ascii",
    "authorization-bearer",
    "x-api-token",
]


class _Metadata(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = aio.ClientCallDetails(
            details.method, details.timeout, list(self._metadata), None, None
        )
        return await continuation(details, request)


@pytest.mark.parametrize("kind", [k for k in BAD_KINDS if k != "non-ascii"])  # not metadata
async def test_bad_credentials_are_unauthenticated_with_one_message_over_grpc(
    stack: Stack, kind: str
) -> None:
    credentials = await bad_credentials(stack, kind)
    async with aio.insecure_channel(
        stack.target, interceptors=[_Metadata(credentials.grpc_metadata)]
    ) as channel:
        api = Stubs(channel)
        import_call: Call = lambda api, c, w: api.wallets.ImportWallet(  # noqa: E731
            pb.ImportWalletRequest(customer_id=c, network="polygon", address=ALICE_POLYGON)
        )
        for name, call in {**GRPC_CALLS, "ImportWallet": import_call}.items():
            # Real IDs, and malformed ones: authentication comes before any validation.
            for customer_id, wallet_id in (("cus_alice", "wal_alice_polygon"), ("bad", "bad")):
                code, details, _ = await outcome(call(api, customer_id, wallet_id))
                assert (code, details) == (UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE), name
    # Nothing was changed by any of those calls.
    listed = await Stubs(stack.keyed).wallets.ListWallets(
        pb.ListWalletsRequest(customer_id="cus_alice")
    )
    assert [w.wallet_id for w in listed.wallets] == ["wal_alice_ethereum", "wal_alice_polygon"]


@pytest.mark.parametrize("kind", BAD_KINDS)
async def test_bad_credentials_are_401_with_one_body_over_rest(
    stack: Stack, rest: Gateway, kind: str
) -> None:
    credentials = await bad_credentials(stack, kind)
    routes = [*REST_ROUTES, ("POST", "/v1/customers/{c}/wallets/import")]
    for method, template in routes:
        for c, w in (("cus_alice", "wal_alice_polygon"), ("bad", "bad")):
            status, body, headers = await rest.request(
                method,
                template.format(c=c, w=w),
                headers=credentials.http_headers,
                json={"network": "polygon", "address": ALICE_POLYGON} if method == "POST" else None,
            )
            assert status == 401, (method, template)
            assert headers["WWW-Authenticate"] == WWW_AUTHENTICATE
            assert headers["Content-Type"].startswith("application/json")
            # No x-api-key at all is API_KEY_MISSING; any other key one and the same.
            sent = "x-api-key" in {k for k, _ in credentials.grpc_metadata}
            assert body == {
                "code": UNAUTHENTICATED.value[0],
                "message": UNAUTHENTICATED_MESSAGE,
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID" if sent else "API_KEY_MISSING",
                        "domain": "balances.v1",
                        "metadata": {},
                    }
                ],
            }


async def test_health_and_reflection_need_no_key(stack: Stack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    call = reflection.ServerReflectionInfo(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="balances.v1.WalletsService"
                ),
            ]
        )
    )
    answers = [answer async for answer in call]
    services = {s.name for s in answers[0].list_services_response.service}
    assert {"balances.v1.BalancesService", "balances.v1.WalletsService"} <= services
    assert answers[1].file_descriptor_response.file_descriptor_proto
    # ...while the API itself, on the same key-less channel, does not answer.
    code, _, _ = await outcome(
        Stubs(stack.channel).wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_alice"))
    )
    assert code == UNAUTHENTICATED


async def test_revocation_takes_effect_on_the_next_call(stack: Stack, rest: Gateway) -> None:
    first, second = await new_key(stack, "default"), await new_key(stack, "default")
    other_tenant = await new_key(stack, "other")
    request = pb.GetWalletRequest(customer_id="cus_alice", wallet_id="wal_alice_polygon")
    path = "/v1/customers/cus_alice/wallets/wal_alice_polygon"
    async with keyed_channel(stack.target, first) as channel:
        api = Stubs(channel)
        assert (await api.wallets.GetWallet(request)).wallet.wallet_id == "wal_alice_polygon"
        status, _, _ = await rest.request("GET", path, headers={"X-API-Key": first})
        assert status == 200
        await stack.service.stores.api_keys.revoke_key(key_id(first))
        code, details, _ = await outcome(api.wallets.GetWallet(request))  # same channel
        assert (code, details) == (UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        status, _, _ = await rest.request("GET", path, headers={"X-API-Key": first})
        assert status == 401
    # The tenant's other keys, and other tenants' keys, are untouched.
    for key in (second, stack.api_key):
        status, _, _ = await rest.request("GET", path, headers={"X-API-Key": key})
        assert status == 200
    status, _, _ = await rest.request(
        "GET", "/v1/customers/cus_alice/wallets", headers={"X-API-Key": other_tenant}
    )
    assert status == 404


# --- logs ------------------------------------------------------------------------------------


async def test_logs_never_contain_an_api_key_even_at_debug(stack: Stack, rest: Gateway) -> None:
    with captured_logs() as logs:
        good = await new_key(stack, "default")
        other = await new_key(stack, "other")
        wrong_secret = f"bk_{key_id(good)}_{secrets.token_urlsafe(32)}"
        remember(wrong_secret)
        async with keyed_channel(stack.target, other) as channel:
            await Stubs(channel).wallets.ImportWallet(
                pb.ImportWalletRequest(
                    customer_id="cus_logs", network="polygon", address=ALICE_POLYGON
                )
            )
        for key in (good, wrong_secret, other, "not-a-key"):
            async with keyed_channel(stack.target, key) as channel:
                await outcome(
                    Stubs(channel).wallets.ListWallets(
                        pb.ListWalletsRequest(customer_id="cus_alice")
                    )
                )
            await rest.request(
                "GET", "/v1/customers/cus_alice/balances", headers={"X-API-Key": key}
            )
            await rest.request(
                "GET", "/v1/customers/cus_alice/wallets", headers={"Authorization": f"Bearer {key}"}
            )
            await rest.request(
                "GET",
                "/v1/wallets/wal_alice_polygon/balance",
                headers={"Grpc-Metadata-X-Api-Key": key},
            )
        await stack.service.stores.api_keys.revoke_key(key_id(good))
        async with keyed_channel(stack.target, good) as channel:
            await outcome(
                Stubs(channel).wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_alice"))
            )
    text = logs.text()
    # The capture saw the interesting moments (so the check below is not vacuous)...
    assert f"added API key {key_id(good)}" in text
    assert f"revoked API key {key_id(good)}" in text
    assert "registered wallet" in text
    assert "Unauthenticated: missing or invalid API key" in text
    assert "GET /v1/customers/cus_alice/balances" in text  # the REST access log
    # ...and none of the keys presented, valid or not, nor their digests.
    logs.assert_no_key_material([good, other, wrong_secret, stack.api_key])
