"""Reading the chain through the real server: failures, failover, fallback, blocks, prices.

Every test goes over a real gRPC socket to a real server reading real anvil
nodes through counting proxies whose URL path stands for a provider key
(``SECRET-PROVIDER-KEY``): no error detail and no log line may carry it.  Tests
that move funds, stop a node or change a feed build their own world on their own
node; the shared ``world`` is only read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from eth_utils.address import to_checksum_address
from google.protobuf.json_format import MessageToDict

from balances.v1 import balances_pb2 as pb
from service.devchain.anvil import AnvilFactory, AnvilNode
from service.devchain.deploy import mine, mint, set_feed_round
from service.devchain.rpc import rpc_call
from service.devchain.world import (
    POLYGON,
    DemoWallet,
    DemoWorld,
    demo_tokens,
    deploy_network,
    fund_wallets,
)
from service.domain import Snapshot
from service.logs import setup_logging
from service.settings import PriceSettings, TokenSettings
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SECRET = "SECRET-PROVIDER-KEY"
NO_CODE = to_checksum_address("0x" + "de" * 20)  # nothing is ever deployed here


def holder(n: int) -> str:
    return to_checksum_address(f"0x{0xC0FFEE:06x}{n:034x}")


def assert_unavailable_naming(error: grpc.aio.AioRpcError, *names: str) -> None:
    """UNAVAILABLE, naming ``names``, never a zero amount, a URL or the provider key."""
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), details)
    for name in names:
        assert name in details, (name, details)
    assert "0.00" not in details
    assert SECRET not in details
    assert "http" not in details and "127.0.0.1" not in details


def amounts(response: Any) -> list[list[dict[str, Any]]]:
    """Per wallet, its balances as proto3 JSON (for comparing two responses)."""
    wallets = response.wallets if hasattr(response, "wallets") else [response]
    return [MessageToDict(w)["balances"] for w in wallets]


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return caplog.text + "".join(str(r.args) for r in caplog.records)


async def own_world(node: AnvilNode, wallets: Sequence[DemoWallet]) -> DemoWorld:
    """A polygon-like world of our own (same chain id as the plan) on ``node``."""
    await node.start()
    world = DemoWorld()
    world.networks["polygon"] = await deploy_network(POLYGON, node.url)
    await fund_wallets(world, list(wallets))
    return world


CAROL = [
    DemoWallet(
        "wal_carol_1", "cus_carol", "polygon", holder(1), {"USDC": 1_000_000, "POL": 10**18}
    ),
    DemoWallet("wal_carol_2", "cus_carol", "polygon", holder(2), {"USDC": 2_500_000}),
    DemoWallet("wal_carol_3", "cus_carol", "polygon", holder(3), {"USDT": 3_000_001}),
]


@pytest_asyncio.fixture(loop_scope="session")
async def carol_node(start_anvil: AnvilFactory) -> AsyncIterator[tuple[AnvilNode, DemoWorld]]:
    node = start_anvil(POLYGON.chain_id)
    yield node, await own_world(node, CAROL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- 1. a token address with no code -------------------------------------------------------


async def test_token_without_code_is_unavailable_naming_network_and_token(
    world: DemoWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service")
    ghost = TokenSettings(symbol="GHOST", address=NO_CODE, decimals=6, price=PriceSettings(peg="1"))
    ethereum = world.networks["ethereum"]
    tokens = (*demo_tokens(ethereum), ghost.token)
    async with running_stack(
        world, tmp_path, network_changes={"ethereum": {"tokens": tokens}}
    ) as stack:
        with pytest.raises(grpc.aio.AioRpcError) as wallet:
            await stack.stub.GetWalletBalance(
                pb.GetWalletBalanceRequest(wallet_id="wal_alice_ethereum")
            )
        assert_unavailable_naming(wallet.value, "ethereum", "GHOST")
        with pytest.raises(grpc.aio.AioRpcError) as customer:
            await stack.stub.GetCustomerBalances(
                pb.GetCustomerBalancesRequest(customer_id="cus_alice")
            )
        assert_unavailable_naming(customer.value, "ethereum", "GHOST")
        # The other network is unaffected.
        polygon = await stack.stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
        )
        assert polygon.balances[0].amount == "1250.50"
    assert "GHOST" in caplog.text
    assert SECRET not in log_text(caplog)


# --- 2. a node answering 503, a stopped node; failures never cached --------------------------


async def test_node_answering_503_is_unavailable_and_not_cached(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service")
    request = pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon")
    stack.proxies["polygon"].fail_with = 503
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GetWalletBalance(request)
    assert_unavailable_naming(caught.value, "polygon")
    stack.proxies["polygon"].fail_with = None
    stack.reset_counts()
    response = await stack.stub.GetWalletBalance(request)
    assert response.balances[0].amount == "42.00"
    assert stack.eth_calls() == {"polygon": 1, "ethereum": 0}
    assert "503" in caplog.text  # the cause is logged, with the URL redacted
    assert SECRET not in log_text(caplog)


async def test_stopped_node_is_unavailable_and_the_failure_is_not_cached(
    carol_node: tuple[AnvilNode, DemoWorld], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service")
    node, world = carol_node
    request = pb.GetCustomerBalancesRequest(customer_id="cus_carol")
    async with running_stack(world, tmp_path) as stack:
        await node.stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.GetCustomerBalances(request)
        assert_unavailable_naming(caught.value, "polygon")
        with pytest.raises(grpc.aio.AioRpcError) as wallet:
            await stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_carol_1"))
        assert_unavailable_naming(wallet.value, "polygon")
        await node.start()  # same port, same state
        stack.reset_counts()
        response = await stack.stub.GetCustomerBalances(request)
        assert [w.balances[0].amount for w in response.wallets] == ["1.00", "2.50", "0.00"]
        assert stack.eth_calls() == {"polygon": 1}
    assert SECRET not in log_text(caplog)


# --- 3. failover ---------------------------------------------------------------------------


async def test_failover_from_a_dead_url_to_the_next(
    world: DemoWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service")
    dead = f"http://127.0.0.1:{free_port()}/v3/{SECRET}-DEAD"
    async with running_stack(
        world, tmp_path, urls_before_proxy={"polygon": [dead], "ethereum": [dead]}
    ) as stack:
        response = await stack.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_alice")
        )
        assert response.total_balance.amount == "4106.99"
        assert stack.eth_calls() == {"polygon": 1, "ethereum": 1}
    assert "failed" in caplog.text and "/***" in caplog.text  # the dead URL, redacted
    assert SECRET not in log_text(caplog)


# --- 4. no Multicall3: a JSON-RPC batch pinned to one block --------------------------------


async def test_without_multicall3_reads_one_pinned_json_rpc_batch(
    world: DemoWorld, stack: Stack, tmp_path: Path
) -> None:
    request = pb.GetCustomerBalancesRequest(customer_id="cus_bob")
    via_multicall = await stack.stub.GetCustomerBalances(request)
    polygon_only = DemoWorld(
        {"polygon": replace(world.networks["polygon"], multicall3=NO_CODE)},
        [w for w in world.wallets if w.network == "polygon"],
    )
    async with running_stack(polygon_only, tmp_path / "fallback") as fallback:
        assert not fallback.service.readers["polygon"].uses_multicall
        response = await fallback.stub.GetCustomerBalances(request)
        proxy = fallback.proxies["polygon"]
    assert amounts(response) == amounts(via_multicall)
    assert response.total_balance == via_multicall.total_balance
    # One header request, then one batch: 3 balances (USDC, USDT via eth_call; POL via
    # eth_getBalance) and 2 feed reads, every one pinned to the header's number.
    assert len(proxy.payloads) == 2
    header, batch = proxy.payloads
    assert header["method"] == "eth_getBlockByNumber" and header["params"][0] == "latest"
    assert isinstance(batch, list)
    assert sorted(i["method"] for i in batch) == ["eth_call"] * 4 + ["eth_getBalance"]
    pinned = hex(response.wallets[0].block_number)
    assert {i["params"][1] for i in batch} == {pinned}
    assert proxy.counts["eth_call"] == 4 and proxy.counts["eth_getBlockByNumber"] == 1


# --- 5. batch splitting ----------------------------------------------------------------------


async def test_split_batches_are_pinned_to_the_first_calls_block(
    world: DemoWorld, tmp_path: Path
) -> None:
    async with running_stack(
        world, tmp_path, network_changes={"polygon": {"max_calls_per_batch": 3}}
    ) as stack:
        response = await stack.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_alice")
        )
        calls = stack.proxies["polygon"].calls("eth_call")
        assert stack.eth_calls() == {"polygon": 3, "ethereum": 1}
    # 2 header calls + 3 balances + 2 feed reads = 7 calls in chunks of at most 3.
    polygon = next(w for w in response.wallets if w.network == "polygon")
    assert [c[1] for c in calls] == ["latest", hex(polygon.block_number), hex(polygon.block_number)]
    assert response.total_balance.amount == "4106.99"
    assert [b.amount for b in polygon.balances] == ["1250.50", "0.00", "12.50"]


# --- 6. confirmations and block tags ---------------------------------------------------------


async def test_confirmations_read_head_minus_n(
    carol_node: tuple[AnvilNode, DemoWorld], tmp_path: Path
) -> None:
    node, world = carol_node
    await mine(node.url, 5)
    async with running_stack(
        world, tmp_path, network_changes={"polygon": {"confirmations": 2}}
    ) as stack:
        head = int(await rpc_call(node.url, "eth_blockNumber"), 16)
        response = await stack.stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id="wal_carol_2")
        )
        assert [c[1] for c in stack.proxies["polygon"].calls("eth_call")] == [hex(head - 2)]
    assert response.block_number == head - 2
    block = await rpc_call(node.url, "eth_getBlockByNumber", [hex(head - 2), False])
    assert response.last_updated.seconds == int(block["timestamp"], 16)
    assert response.balances[0].amount == "2.50"


async def test_a_mint_shows_only_after_the_confirmations(
    carol_node: tuple[AnvilNode, DemoWorld], tmp_path: Path
) -> None:
    node, world = carol_node
    request = pb.GetWalletBalanceRequest(wallet_id="wal_carol_2")
    usdc = world.networks["polygon"].tokens["USDC"]
    await mine(node.url, 5)
    await mint(node.url, usdc, holder(2), 500_000)  # mined in its own block
    async with running_stack(
        world, tmp_path, network_changes={"polygon": {"confirmations": 2}}
    ) as stack:
        assert (await stack.stub.GetWalletBalance(request)).balances[0].amount == "2.50"
    await mine(node.url, 2)
    async with running_stack(
        world, tmp_path / "later", network_changes={"polygon": {"confirmations": 2}}
    ) as stack:
        assert (await stack.stub.GetWalletBalance(request)).balances[0].amount == "3.00"


@pytest.mark.parametrize("tag", ["safe", "finalized"])
async def test_block_tags_are_accepted_and_read_at_that_block(
    carol_node: tuple[AnvilNode, DemoWorld], tmp_path: Path, tag: str
) -> None:
    node, world = carol_node
    await mine(node.url, 100)  # so the tagged block is past the deployment
    async with running_stack(
        world, tmp_path, network_changes={"polygon": {"block_tag": tag}}
    ) as stack:
        tagged = await rpc_call(node.url, "eth_getBlockByNumber", [tag, False])
        response = await stack.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_carol")
        )
        assert [c[1] for c in stack.proxies["polygon"].calls("eth_call")] == [tag]
    head = int(await rpc_call(node.url, "eth_blockNumber"), 16)
    assert {w.block_number for w in response.wallets} == {int(tagged["number"], 16)}
    assert response.wallets[0].block_number < head
    assert [w.balances[0].amount for w in response.wallets] == ["1.00", "2.50", "0.00"]


# --- 7. price feeds --------------------------------------------------------------------------


async def test_stale_or_non_positive_feed_fails_the_total_but_not_the_wallet(
    carol_node: tuple[AnvilNode, DemoWorld], tmp_path: Path
) -> None:
    node, world = carol_node
    feed = world.networks["polygon"].feed
    latest = await rpc_call(node.url, "eth_getBlockByNumber", ["latest", False])
    now = int(latest["timestamp"], 16)
    cases = [
        ("stale", 50_000_000, now - 86_400 - 3_600, "stale"),
        ("zero", 0, now, "not positive"),
        ("negative", -1, now, "not positive"),
    ]
    for name, answer, updated_at, reason in cases:
        await set_feed_round(node.url, feed, answer, updated_at)
        async with running_stack(world, tmp_path / name) as stack:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stack.stub.GetCustomerBalances(
                    pb.GetCustomerBalancesRequest(customer_id="cus_carol")
                )
            assert_unavailable_naming(caught.value, "price", "POL", "polygon", reason)
            wallet = await stack.stub.GetWalletBalance(
                pb.GetWalletBalanceRequest(wallet_id="wal_carol_1")
            )
            assert [b.amount for b in wallet.balances] == ["1.00", "0.00", "1.00"]
    # A fresh, positive answer makes the total work again: $1 + $2.50 + $3.000001 + 1 POL x $2.
    await set_feed_round(node.url, feed, 200_000_000, now)
    async with running_stack(world, tmp_path / "fresh") as stack:
        response = await stack.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_carol")
        )
    assert response.total_balance.amount == "8.50"


# --- 8. an unexpected exception --------------------------------------------------------------


async def test_unexpected_exception_is_internal_with_request_id_and_redacted_traceback(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = stack.proxies["polygon"].url  # a configured URL, as aiohttp errors would carry

    async def boom(
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        raise RuntimeError(f"boom {url}")

    monkeypatch.setattr(stack.service.readers["polygon"], "snapshot", boom)
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("web3").level
    # The handler the `balances` command installs (service.cli), writing to stderr.
    setup_logging(u for n in stack.settings.networks for u in n.rpc_urls)
    try:
        call = stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("web3").setLevel(saved[2])
    details = caught.value.details() or ""
    request_id = dict(await call.trailing_metadata())["x-request-id"]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert details == f"internal error (request id {request_id})"
    assert "boom" not in details and SECRET not in details
    logged = capsys.readouterr().err
    assert f"[{request_id}] failed unexpectedly" in logged
    assert "Traceback (most recent call last)" in logged
    assert "RuntimeError: boom http://127.0.0.1:" in logged and "/***" in logged
    assert SECRET not in logged


# --- 9. the caller's deadline bounds upstream calls ------------------------------------------


async def test_deadline_bounds_the_upstream_read(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.balances")
    proxy = stack.proxies["polygon"]
    proxy.delay = 5.0  # as long as the configured rpc_timeout_seconds
    request = pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GetWalletBalance(request, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert proxy.counts["eth_call"] == 1  # the read did go upstream
    inflight = stack.service.queries._inflight
    for _ in range(60):  # the shared read must end on the caller's budget, not after 5 s
        if not inflight:
            break
        await asyncio.sleep(0.05)
    assert not inflight
    # The reader's own timeout ended it, on the caller's budget (~0.5 s), not on its 5 s one.
    assert re.search(r"network polygon: timed out after 0\.\d+s", caplog.text)
    proxy.delay = 0.0
    response = await stack.stub.GetWalletBalance(request)  # nothing failed was cached
    assert response.balances[0].amount == "42.00"


# --- 10. consistency and cache TTL -----------------------------------------------------------


async def test_one_block_per_network_and_new_amounts_only_after_the_ttl(
    carol_node: tuple[AnvilNode, DemoWorld], tmp_path: Path
) -> None:
    node, world = carol_node
    request = pb.GetCustomerBalancesRequest(customer_id="cus_carol")
    ttl = 1.5
    async with running_stack(world, tmp_path, cache_ttl_seconds=ttl) as stack:
        before = await stack.stub.GetCustomerBalances(request)
        assert len(before.wallets) == 3
        assert len({w.block_number for w in before.wallets}) == 1
        assert len({w.last_updated.seconds for w in before.wallets}) == 1
        assert stack.eth_calls() == {"polygon": 1}
        await mint(node.url, world.networks["polygon"].tokens["USDC"], holder(2), 1_250_000)
        stack.reset_counts()
        cached = await stack.stub.GetCustomerBalances(request)
        assert stack.eth_calls() == {"polygon": 0}
        assert cached == before
        await asyncio.sleep(ttl + 0.3)
        after = await stack.stub.GetCustomerBalances(request)
        assert stack.eth_calls() == {"polygon": 1}
    assert len({w.block_number for w in after.wallets}) == 1
    assert after.wallets[0].block_number > before.wallets[0].block_number
    assert [w.balances[0].amount for w in after.wallets] == ["1.00", "3.75", "0.00"]
    assert after.total_balance.amount == "8.25"  # 1 + 3.75 + 3.000001 + 1 POL x $0.50
