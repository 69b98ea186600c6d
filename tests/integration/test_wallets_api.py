"""balances.v1.WalletsService over gRPC and REST, against a real server on real chains."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balances.v1 import balances_pb2, balances_pb2_grpc, wallets_pb2_grpc
from balances.v1 import wallets_pb2 as pb
from service.auth.keys import new_api_key
from service.devchain.world import DemoWorld
from service.grpc_server import create_server
from service.settings import load_settings
from service.wiring import Service, open_service
from tests.support.rest import Gateway
from tests.support.stack import Stack, keyed_channel, write_stack_config
from tests.support.tenancy_kit import (
    KNOWN_KEYS,
    Stubs,
    no_key_material_logged,
    outcome,
    served_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

NEW_ADDRESS = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"  # EIP-55, mixed case
ADDRESSES = [
    "0xABCdeFaBCdeFaBcdEFAbcDeFabCdEFABCDef0001",
    "0xFedCBAfEdcbafedCbAfedcbafEDcBAfEdcba0002",
    "0x0000000000000000000000000000000000000a11",
]
BAD_CHECKSUM = NEW_ADDRESS[:-2] + "eb0"  # "B" -> "b": still mixed case, wrong checksum
ASSIGNED_ID = re.compile(r"wal_[A-Za-z0-9_]{1,64}")
WALLET_KEYS = {"walletId", "customerId", "network", "address", "createTime"}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
def api(stack: Stack) -> Stubs:
    return Stubs(stack.keyed)


@pytest_asyncio.fixture(loop_scope="session")
async def rest(stack: Stack) -> AsyncIterator[Gateway]:
    async with served_gateway(stack, stack.api_key) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def no_api_key_in_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here uses keys: nothing logged during it may contain one."""
    with no_key_material_logged(request):
        yield


def import_request(customer_id: str, network: str, address: str) -> pb.ImportWalletRequest:
    return pb.ImportWalletRequest(customer_id=customer_id, network=network, address=address)


async def list_all(api: Stubs, customer_id: str, page_size: int) -> tuple[list[str], list[str]]:
    """Wallet IDs over every page, and the tokens seen (the last one empty)."""
    ids: list[str] = []
    tokens: list[str] = []
    token = ""
    for _ in range(100):
        page = await api.wallets.ListWallets(
            pb.ListWalletsRequest(customer_id=customer_id, page_size=page_size, page_token=token)
        )
        assert len(page.wallets) <= (page_size or 50)
        ids += [w.wallet_id for w in page.wallets]
        token = page.next_page_token
        tokens.append(token)
        if not token:
            return ids, tokens
    raise AssertionError("paging never ended")


# --- ImportWallet ----------------------------------------------------------------------


async def test_import_creates_then_returns_the_same_wallet(api: Stubs) -> None:
    first = await api.wallets.ImportWallet(
        import_request("cus_carol", "polygon", NEW_ADDRESS.lower())
    )
    assert first.created is True
    wallet = first.wallet
    assert ASSIGNED_ID.fullmatch(wallet.wallet_id)
    assert (wallet.customer_id, wallet.network, wallet.address) == (
        "cus_carol",
        "polygon",
        NEW_ADDRESS,
    )
    assert wallet.create_time.seconds > 1_600_000_000
    for spelling in (NEW_ADDRESS, NEW_ADDRESS.lower(), "0x" + NEW_ADDRESS[2:].upper()):
        again = await api.wallets.ImportWallet(import_request("cus_carol", "polygon", spelling))
        assert again.created is False
        assert again.wallet == wallet
    # The same address on the other network is another wallet.
    other_network = await api.wallets.ImportWallet(
        import_request("cus_carol", "ethereum", NEW_ADDRESS)
    )
    assert other_network.created is True
    assert other_network.wallet.wallet_id != wallet.wallet_id
    got = await api.wallets.GetWallet(
        pb.GetWalletRequest(customer_id="cus_carol", wallet_id=wallet.wallet_id)
    )
    assert got.wallet == wallet


async def test_import_for_another_customer_of_the_tenant_already_exists(api: Stubs) -> None:
    code, details, _ = await outcome(
        api.wallets.ImportWallet(
            import_request("cus_carol", "polygon", "0xd3e0000000000000000000000000000000000001")
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "cus_alice" not in details and "wal_alice" not in details
    ids, _ = await list_all(api, "cus_alice", 50)
    assert ids == ["wal_alice_ethereum", "wal_alice_polygon"]
    assert (await outcome(api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_carol"))))[
        0
    ] == NOT_FOUND


INVALID_IMPORTS = [
    pytest.param("cus_carol", "polygon", "0x123", id="short-address"),
    pytest.param("cus_carol", "polygon", NEW_ADDRESS + "0", id="long-address"),
    pytest.param("cus_carol", "polygon", "742d35cc6634c0532925a3b844bc9e7595f0beb0", id="no-0x"),
    pytest.param("cus_carol", "polygon", "0x" + "g" * 40, id="not-hex"),
    pytest.param("cus_carol", "polygon", "", id="empty-address"),
    pytest.param("cus_carol", "polygon", BAD_CHECKSUM, id="bad-checksum"),
    pytest.param("cus_carol", "solana", NEW_ADDRESS, id="unknown-network"),
    pytest.param("cus_carol", "", NEW_ADDRESS, id="empty-network"),
    pytest.param("cus_carol", "Polygon", NEW_ADDRESS, id="network-case"),
    pytest.param("carol", "polygon", NEW_ADDRESS, id="customer-no-prefix"),
    pytest.param("cus_", "polygon", NEW_ADDRESS, id="customer-empty-suffix"),
    pytest.param("cus_a-b", "polygon", NEW_ADDRESS, id="customer-dash"),
    pytest.param("cus_" + "x" * 65, "polygon", NEW_ADDRESS, id="customer-too-long"),
]


@pytest.mark.parametrize(("customer_id", "network", "address"), INVALID_IMPORTS)
async def test_invalid_import_is_invalid_argument_and_writes_nothing(
    api: Stubs, rest: Gateway, customer_id: str, network: str, address: str
) -> None:
    code, details, _ = await outcome(
        api.wallets.ImportWallet(import_request(customer_id, network, address))
    )
    assert code == INVALID, details
    path = f"/v1/customers/{customer_id}/wallets/import"
    status, body, _ = await rest.request(
        "POST", path, json={"network": network, "address": address}
    )
    assert status == 400, body
    assert body["code"] == 3
    # Nothing was registered under the well-formed customer.
    assert (await outcome(api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_carol"))))[
        0
    ] == NOT_FOUND


async def test_import_over_rest(rest: Gateway) -> None:
    path = "/v1/customers/cus_carol/wallets/import"
    body = {"network": "polygon", "address": NEW_ADDRESS.lower()}
    status, first, _ = await rest.request("POST", path, json=body)
    assert status == 200, first
    assert first["created"] is True
    assert set(first["wallet"]) == WALLET_KEYS
    assert first["wallet"]["address"] == NEW_ADDRESS
    assert first["wallet"]["customerId"] == "cus_carol"
    status, again, _ = await rest.request("POST", path, json=body)
    assert status == 200
    assert again == {"wallet": first["wallet"], "created": False}
    # The path names the customer: a customerId in the body cannot override it.
    status, sneaky, _ = await rest.request(
        "POST", path, json={**body, "address": ADDRESSES[0], "customerId": "cus_dave"}
    )
    assert status == 200 and sneaky["wallet"]["customerId"] == "cus_carol"
    status, clash, _ = await rest.request(
        "POST", "/v1/customers/cus_dave/wallets/import", json=body
    )
    assert status == 409
    assert clash["code"] == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert set(clash) == {"code", "message", "details"}


async def test_get_on_the_import_path_is_get_wallet_of_import(rest: Gateway) -> None:
    """As grpc-gateway routes it: the request's own method first, so GET and DELETE here
    are GetWallet/DeleteWallet of a wallet ID "import", which is no wallet ID (changed:
    both were 405 allowing POST)."""
    for method in ("GET", "DELETE"):
        status, body, _ = await rest.request(method, "/v1/customers/cus_alice/wallets/import")
        assert (status, body["code"]) == (400, grpc.StatusCode.INVALID_ARGUMENT.value[0]), method
    status, _, headers = await rest.request("PUT", "/v1/customers/cus_alice/wallets/import")
    # Allow names the methods /openapi.json documents for the path (its import template).
    assert (status, headers["Allow"]) == (405, "POST")


# --- ListWallets ------------------------------------------------------------------------


async def test_paging_walks_every_wallet_once(api: Stubs, rest: Gateway) -> None:
    for address in ADDRESSES:
        await api.wallets.ImportWallet(import_request("cus_alice", "polygon", address))
    everything, tokens = await list_all(api, "cus_alice", 0)  # default page size: one page
    assert len(everything) == 5 and tokens == [""]
    for page_size in (1, 2, 4, 5, 1000, 2**31 - 1):
        ids, tokens = await list_all(api, "cus_alice", page_size)
        assert ids == everything, page_size
        assert tokens[-1] == "" and all(tokens[:-1])
        assert len(tokens) == -(-5 // page_size)
    # The same walk over REST, with the JSON spelling of the parameters.
    ids, token = [], ""
    for _ in range(10):
        query = {"pageSize": "1"} | ({"pageToken": token} if token else {})
        status, body, _ = await rest.request("GET", "/v1/customers/cus_alice/wallets", params=query)
        assert status == 200, body
        assert set(body) == {"wallets", "nextPageToken"}
        assert all(set(w) == WALLET_KEYS for w in body["wallets"])
        ids += [w["walletId"] for w in body["wallets"]]
        token = body["nextPageToken"]
        if not token:
            break
    assert ids == everything


def forged_token(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def test_bad_page_tokens_and_sizes_are_invalid_argument(api: Stubs, rest: Gateway) -> None:
    first = await api.wallets.ListWallets(
        pb.ListWalletsRequest(customer_id="cus_alice", page_size=1)
    )
    alice_token = first.next_page_token
    assert alice_token
    await api.wallets.ImportWallet(import_request("cus_bob", "polygon", ADDRESSES[0]))
    bad_tokens = [
        ("cus_bob", alice_token),  # another customer's token
        ("cus_alice", "garbage!!"),
        ("cus_alice", alice_token[:-3]),
        ("cus_alice", "x" * 5000),
        ("cus_alice", forged_token([1, 2])),
        ("cus_alice", forged_token({"c": "cus_alice", "t": "2024-01-01T00:00:00", "w": "wal_a"})),
        ("cus_alice", forged_token({"c": "cus_alice", "t": 5, "w": "wal_a"})),
        ("cus_alice", forged_token({"c": "cus_alice", "t": "2024-01-01T00:00:00Z", "w": "x"})),
        # A time that leaves datetime's range when converted to UTC.
        (
            "cus_alice",
            forged_token({"c": "cus_alice", "t": "0001-01-01T00:00:00+05:00", "w": "wal_a"}),
        ),
        (
            "cus_alice",
            forged_token({"c": "cus_alice", "t": "9999-12-31T23:59:59-05:00", "w": "wal_a"}),
        ),
        # JSON nested past the parser's recursion limit.
        ("cus_alice", base64.urlsafe_b64encode(b"[" * 100_000).decode()),
    ]
    for customer_id, token in bad_tokens:
        code, details, _ = await outcome(
            api.wallets.ListWallets(
                pb.ListWalletsRequest(customer_id=customer_id, page_size=1, page_token=token)
            )
        )
        assert (code, details) == (INVALID, "page_token is invalid"), token[:80]
    code, _, _ = await outcome(
        api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_alice", page_size=-1))
    )
    assert code == INVALID
    for query in (
        {"pageToken": "garbage!!"},
        {"pageSize": "-1"},
        {"pageSize": "abc"},
        {"pageToken": base64.urlsafe_b64encode(b"[" * 5000).decode()},
    ):
        status, body, _ = await rest.request("GET", "/v1/customers/cus_alice/wallets", params=query)
        assert (status, body["code"]) == (400, 3), query
    status, body, _ = await rest.request(
        "GET", "/v1/customers/cus_bob/wallets", params={"pageToken": alice_token}
    )
    assert status == 400


async def test_listing_an_unknown_or_malformed_customer(api: Stubs) -> None:
    code, details, _ = await outcome(
        api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_nobody"))
    )
    assert (code, details) == (NOT_FOUND, "customer cus_nobody not found")
    code, _, _ = await outcome(api.wallets.ListWallets(pb.ListWalletsRequest(customer_id="x")))
    assert code == INVALID


# --- GetWallet ---------------------------------------------------------------------------


async def test_get_wallet_over_grpc_and_rest(api: Stubs, rest: Gateway, stack: Stack) -> None:
    demo = next(w for w in stack.world.wallets if w.wallet_id == "wal_alice_polygon")
    got = (
        await api.wallets.GetWallet(
            pb.GetWalletRequest(customer_id="cus_alice", wallet_id="wal_alice_polygon")
        )
    ).wallet
    assert (got.wallet_id, got.customer_id, got.network, got.address) == (
        demo.wallet_id,
        demo.customer_id,
        demo.network,
        demo.address,
    )
    status, body, _ = await rest.request("GET", "/v1/customers/cus_alice/wallets/wal_alice_polygon")
    assert status == 200
    assert set(body) == WALLET_KEYS  # the bare wallet (response_body), no "wallet" wrapper
    assert body["walletId"] == "wal_alice_polygon"
    assert body["customerId"] == "cus_alice"
    assert body["network"] == "polygon"
    assert body["address"] == demo.address
    assert RFC3339_UTC.fullmatch(body["createTime"])
    assert body["createTime"] == got.create_time.ToJsonString()


@pytest.mark.parametrize(
    ("customer_id", "wallet_id", "code", "status"),
    [
        ("cus_bob", "wal_alice_polygon", NOT_FOUND, 404),  # someone else's wallet
        ("cus_alice", "wal_nobody", NOT_FOUND, 404),
        ("cus_nobody", "wal_alice_polygon", NOT_FOUND, 404),
        ("cus_alice", "not-a-wallet", INVALID, 400),
        ("bad", "wal_alice_polygon", INVALID, 400),
    ],
)
async def test_get_wallet_errors(
    api: Stubs,
    rest: Gateway,
    customer_id: str,
    wallet_id: str,
    code: grpc.StatusCode,
    status: int,
) -> None:
    got, details, _ = await outcome(
        api.wallets.GetWallet(pb.GetWalletRequest(customer_id=customer_id, wallet_id=wallet_id))
    )
    assert got == code
    assert "0x" not in details
    if code == NOT_FOUND:  # whoever's it is, or whether it exists at all: one message
        assert details == f"wallet {wallet_id} not found"
    http, body, _ = await rest.request("GET", f"/v1/customers/{customer_id}/wallets/{wallet_id}")
    assert (http, body["code"], body["message"]) == (status, code.value[0], details)


# --- DeleteWallet ------------------------------------------------------------------------


async def test_deleted_wallet_is_gone_from_lookups_and_balances_at_once(
    api: Stubs, stack: Stack
) -> None:
    wallet_request = balances_pb2.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    customer_request = balances_pb2.GetCustomerBalancesRequest(customer_id="cus_alice")
    await api.balances.GetWalletBalance(wallet_request)
    before = await api.balances.GetCustomerBalances(customer_request)
    assert {w.wallet_id for w in before.wallets} == {"wal_alice_polygon", "wal_alice_ethereum"}
    # Warm: both answers now come from the cache, without reading a chain.
    stack.reset_counts()
    await api.balances.GetWalletBalance(wallet_request)
    await api.balances.GetCustomerBalances(customer_request)
    assert sum(stack.eth_calls().values()) == 0

    deleted = await api.wallets.DeleteWallet(
        pb.DeleteWalletRequest(customer_id="cus_alice", wallet_id="wal_alice_polygon")
    )
    assert deleted == pb.DeleteWalletResponse()

    code, details, _ = await outcome(
        api.wallets.GetWallet(
            pb.GetWalletRequest(customer_id="cus_alice", wallet_id="wal_alice_polygon")
        )
    )
    assert (code, details) == (NOT_FOUND, "wallet wal_alice_polygon not found")
    code, details, _ = await outcome(api.balances.GetWalletBalance(wallet_request))
    assert (code, details) == (NOT_FOUND, "wallet wal_alice_polygon not found")
    after = await api.balances.GetCustomerBalances(customer_request)
    assert [w.wallet_id for w in after.wallets] == ["wal_alice_ethereum"]
    assert after.total_balance.amount != before.total_balance.amount
    ids, _ = await list_all(api, "cus_alice", 10)
    assert ids == ["wal_alice_ethereum"]
    code, _, _ = await outcome(
        api.wallets.DeleteWallet(
            pb.DeleteWalletRequest(customer_id="cus_alice", wallet_id="wal_alice_polygon")
        )
    )
    assert code == NOT_FOUND


async def test_delete_over_rest_and_the_last_wallet_takes_the_customer(
    api: Stubs, rest: Gateway
) -> None:
    status, body, _ = await rest.request("GET", "/v1/customers/cus_bob/balances")
    assert status == 200
    status, body, _ = await rest.request(
        "DELETE", "/v1/customers/cus_alice/wallets/wal_bob_polygon"
    )
    assert status == 404 and body["message"] == "wallet wal_bob_polygon not found"
    status, body, _ = await rest.request("DELETE", "/v1/customers/cus_bob/wallets/wal_bob_polygon")
    assert (status, body) == (200, {})
    for path in ("/v1/customers/cus_bob/balances", "/v1/customers/cus_bob/wallets"):
        status, body, _ = await rest.request("GET", path)
        assert (status, body["message"]) == (404, "customer cus_bob not found")
    status, _, _ = await rest.request("GET", "/v1/wallets/wal_bob_polygon/balance")
    assert status == 404
    status, _, _ = await rest.request("DELETE", "/v1/customers/cus_bob/wallets/wal_bob_polygon")
    assert status == 404
    # Re-importing the address makes a new wallet with a new ID.
    again = await api.wallets.ImportWallet(
        import_request("cus_bob", "polygon", "0xD3E0000000000000000000000000000000000003")
    )
    assert again.created and again.wallet.wallet_id != "wal_bob_polygon"


# --- concurrency -------------------------------------------------------------------------


async def test_50_concurrent_imports_of_one_address_make_one_wallet(api: Stubs) -> None:
    request = import_request("cus_carol", "ethereum", NEW_ADDRESS)
    responses = await asyncio.gather(*(api.wallets.ImportWallet(request) for _ in range(50)))
    assert len({r.wallet.wallet_id for r in responses}) == 1
    assert sum(r.created for r in responses) == 1
    ids, _ = await list_all(api, "cus_carol", 100)
    assert ids == [responses[0].wallet.wallet_id]


# --- fuzz --------------------------------------------------------------------------------

ALLOWED = {OK, INVALID, NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS}
wallet_ids = (
    st.text()
    | st.from_regex(r"wal_[A-Za-z0-9_]{1,64}", fullmatch=True)
    | st.sampled_from(["wal_alice_polygon", "wal_alice_ethereum", "wal_bob_polygon"])
)
customer_ids = (
    st.text()
    | st.from_regex(r"cus_[A-Za-z0-9_]{1,64}", fullmatch=True)
    | st.sampled_from(["cus_alice", "cus_bob"])
)
addresses = (
    st.text()
    | st.from_regex(r"0x[0-9a-fA-F]{40}", fullmatch=True)
    | st.from_regex(r"0x[0-9a-f]{40}", fullmatch=True)
)
networks = st.text() | st.sampled_from(["polygon", "ethereum"])
offsets = st.integers(-1439, 1439).map(
    lambda m: f"{'+' if m >= 0 else '-'}{abs(m) // 60:02}:{abs(m) % 60:02}"
)
# Times at datetime's ends too: with an offset, their conversion to UTC leaves its range.
any_datetime = st.datetimes() | st.sampled_from([datetime.min, datetime.max])
cursor_times = st.builds(lambda d, o: d.isoformat() + o, any_datetime, offsets) | st.text(
    max_size=40
)
page_tokens = (
    st.text()
    | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
    | st.fixed_dictionaries(
        {
            "c": st.just("cus_alice") | customer_ids,
            "t": cursor_times,
            "w": st.from_regex(r"wal_[a-z0-9]{1,8}", fullmatch=True) | wallet_ids | st.integers(),
        }
    ).map(forged_token)
)


def fuzz_calls(target: str, api_key: str) -> None:
    """Hypothesis over every RPC with a blocking channel (run in a worker thread)."""
    channel = grpc.insecure_channel(target)
    metadata = (("x-api-key", api_key),)
    wallets = wallets_pb2_grpc.WalletsServiceStub(channel)
    balances = balances_pb2_grpc.BalancesServiceStub(channel)

    def code_of(method: Any, request: Any) -> grpc.StatusCode:
        try:
            method(request, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            assert code in ALLOWED, (code, error.details(), request)
            return code
        return OK

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        wallet_id=wallet_ids,
        customer_id=customer_ids,
        address=addresses,
        network=networks,
        page_size=st.integers(-(2**31), 2**31 - 1),
        page_token=page_tokens,
    )
    def never_internal(
        wallet_id: str,
        customer_id: str,
        address: str,
        network: str,
        page_size: int,
        page_token: str,
    ) -> None:
        code_of(
            balances.GetWalletBalance,
            balances_pb2.GetWalletBalanceRequest(wallet_id=wallet_id),
        )
        code_of(
            balances.GetCustomerBalances,
            balances_pb2.GetCustomerBalancesRequest(customer_id=customer_id),
        )
        code_of(wallets.ImportWallet, import_request(customer_id, network, address))
        code_of(
            wallets.ListWallets,
            pb.ListWalletsRequest(
                customer_id=customer_id, page_size=page_size, page_token=page_token
            ),
        )
        code_of(
            wallets.GetWallet, pb.GetWalletRequest(customer_id=customer_id, wallet_id=wallet_id)
        )
        code_of(
            wallets.DeleteWallet,
            pb.DeleteWalletRequest(customer_id=customer_id, wallet_id=wallet_id),
        )

    # Tokens alone, many more: one cheap call each, for a customer that has wallets.
    @settings(max_examples=400, deadline=None, database=None)
    @given(page_token=page_tokens)
    def tokens_never_internal(page_token: str) -> None:
        code_of(
            wallets.ListWallets,
            pb.ListWalletsRequest(customer_id="cus_alice", page_size=1, page_token=page_token),
        )

    try:
        never_internal()
        tokens_never_internal()
    finally:
        channel.close()


async def test_arbitrary_ids_addresses_networks_and_tokens_never_fail_internally(
    stack: Stack,
) -> None:
    await asyncio.to_thread(fuzz_calls, stack.target, stack.api_key)


# --- restart -----------------------------------------------------------------------------


@asynccontextmanager
async def served(config_path: Path) -> AsyncIterator[tuple[Service, str]]:
    """A server from ``config_path`` (directory and all), until the block ends."""
    settings = load_settings(config_path)
    async with open_service(settings) as service:
        server, port, _ = create_server(service, settings.listen)
        await server.start()
        try:
            yield service, f"127.0.0.1:{port}"
        finally:
            await server.stop(None)


async def test_wallets_and_keys_survive_a_restart(world: DemoWorld, tmp_path: Path) -> None:
    rpc_urls = {name: [network.rpc_url] for name, network in world.networks.items()}
    config = await write_stack_config(world, tmp_path, rpc_urls)
    KNOWN_KEYS.add(config.api_key)
    async with served(config.path) as (service, target):
        other_key = new_api_key()
        revoked_key = new_api_key()
        KNOWN_KEYS.update((other_key.plaintext, revoked_key.plaintext))
        await service.stores.api_keys.add_key(other_key.key_id, "other", other_key.digest)
        await service.stores.api_keys.add_key(revoked_key.key_id, "other", revoked_key.digest)
        await service.stores.api_keys.revoke_key(revoked_key.key_id)
        async with keyed_channel(target, other_key.plaintext) as channel:
            imported = await Stubs(channel).wallets.ImportWallet(
                import_request("cus_other", "polygon", NEW_ADDRESS)
            )
        assert imported.created
        async with keyed_channel(target, config.api_key) as channel:
            await Stubs(channel).wallets.DeleteWallet(
                pb.DeleteWalletRequest(customer_id="cus_bob", wallet_id="wal_bob_polygon")
            )

    async with served(config.path) as (_, target):
        async with keyed_channel(target, other_key.plaintext) as channel:
            api = Stubs(channel)
            got = await api.wallets.GetWallet(
                pb.GetWalletRequest(customer_id="cus_other", wallet_id=imported.wallet.wallet_id)
            )
            assert got.wallet == imported.wallet
            again = await api.wallets.ImportWallet(
                import_request("cus_other", "polygon", NEW_ADDRESS)
            )
            assert (again.created, again.wallet) == (False, imported.wallet)
            balance = await api.balances.GetWalletBalance(
                balances_pb2.GetWalletBalanceRequest(wallet_id=imported.wallet.wallet_id)
            )
            assert balance.wallet_id == imported.wallet.wallet_id
        async with keyed_channel(target, config.api_key) as channel:
            api = Stubs(channel)
            ids, _ = await list_all(api, "cus_alice", 1)
            assert ids == ["wal_alice_ethereum", "wal_alice_polygon"]
            code, _, _ = await outcome(
                api.wallets.GetWallet(
                    pb.GetWalletRequest(customer_id="cus_bob", wallet_id="wal_bob_polygon")
                )
            )
            assert code == NOT_FOUND
        async with keyed_channel(target, revoked_key.plaintext) as channel:
            code, _, _ = await outcome(
                Stubs(channel).wallets.ListWallets(pb.ListWalletsRequest(customer_id="cus_other"))
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
