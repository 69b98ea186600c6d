"""Balances at a past block or time, over gRPC and REST, against a real anvil chain.

One chain for the module, with a history: a wallet's USDC and USDT change at
several blocks, Multicall3 arrives only midway (blocks before it are read with
a deployless ``aggregate3``), and the last blocks carry chosen timestamps (two
of them equal) for resolving times.  Every amount is compared with a raw
``balanceOf`` ``eth_call`` at the block the response names; upstream calls are
counted by the stack's ``CountingProxy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from eth_utils.address import to_checksum_address
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.devchain.anvil import AnvilNode
from service.devchain.deploy import (
    CANONICAL_MULTICALL3,
    burn,
    deploy_price_feed,
    deploy_token,
    mine,
    mint,
    place_multicall3,
    set_native_balance,
    transfer,
)
from service.devchain.rpc import rpc_call
from service.devchain.world import POLYGON, DemoNetwork, DemoWallet, DemoWorld
from service.gateway.app import build_gateway_app
from service.gateway.limits import RestLimits
from service.gateway.routes import routes_of
from service.grpc_server import create_server
from service.money import format_amount
from service.wiring import open_service
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.rest import Gateway, serve_gateway
from tests.support.stack import Stack, keyed_channel, running_stack, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WALLET, CUSTOMER = "wal_history", "cus_history"
HOLDER = to_checksum_address("0x" + "5a" * 20)
OTHER = to_checksum_address("0x" + "5b" * 20)
BALANCE_OF = "0x70a08231"
SECRET = "SECRET-PROVIDER-KEY"
TTL_PASSED = 0.02  # seconds: past the 1 ms cache TTL of the cache test (a wait, not a timing)


@dataclass
class History:
    node: AnvilNode
    world: DemoWorld
    usdc: str
    usdt: str
    before_aggregator: list[int] = field(default_factory=list)  # blocks with a change
    after_aggregator: list[int] = field(default_factory=list)
    aggregator_block: int = 0  # the first block Multicall3 had code at
    timed: list[tuple[int, int]] = field(default_factory=list)  # (block, timestamp)
    genesis_time: int = 0

    @property
    def url(self) -> str:
        return self.node.url

    async def balance_of(self, token: str, block: int) -> int:
        """The raw ``balanceOf(HOLDER)`` at ``block``, by a plain ``eth_call``."""
        data = BALANCE_OF + "00" * 12 + HOLDER[2:].lower()
        answer = await rpc_call(self.url, "eth_call", [{"to": token, "data": data}, hex(block)])
        return int(answer, 16)


async def _time_of(url: str, block: int) -> int:
    header = await rpc_call(url, "eth_getBlockByNumber", [hex(block), False])
    return int(header["timestamp"], 16)


async def _head(url: str) -> tuple[int, int]:
    block = await rpc_call(url, "eth_getBlockByNumber", ["latest", False])
    return int(block["number"], 16), int(block["timestamp"], 16)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def history() -> AsyncIterator[History]:
    async with AnvilNode(chain_id=POLYGON.chain_id) as node:
        url = node.url
        usdc = await deploy_token(url, "USD Coin", "USDC", 6)
        usdt = await deploy_token(url, "Tether USD", "USDT", 6)
        feed = await deploy_price_feed(url, 8, 50_000_000, "POL / USD")
        chain = History(node, DemoWorld(), usdc, usdt)
        genesis = await rpc_call(url, "eth_getBlockByNumber", ["0x0", False])
        chain.genesis_time = int(genesis["timestamp"], 16)
        await mint(url, usdc, HOLDER, 1_000_000)
        chain.before_aggregator.append((await _head(url))[0])
        await set_native_balance(url, HOLDER, 3 * 10**18)  # in the next block
        await mint(url, usdc, HOLDER, 2_500_000)
        chain.before_aggregator.append((await _head(url))[0])
        await mine(url)  # the aggregator arrives a block later still
        await place_multicall3(url)
        await mine(url)
        chain.aggregator_block = (await _head(url))[0]
        await burn(url, usdc, HOLDER, 700_000)
        chain.after_aggregator.append((await _head(url))[0])
        await mint(url, usdt, HOLDER, 7_000_001)
        chain.after_aggregator.append((await _head(url))[0])
        # Blocks at chosen times: +100, +200 (a transfer), +200 again, +300.
        _, now = await _head(url)
        for offset, change in ((100, False), (200, True), (200, False), (300, False)):
            await rpc_call(url, "evm_setNextBlockTimestamp", [now + offset])
            if change:
                await transfer(url, usdc, HOLDER, OTHER, 300_000)
            else:
                await mine(url)
            chain.timed.append(await _head(url))
        await rpc_call(url, "anvil_mine", [hex(5), hex(12)])  # a few blocks on top
        chain.world.networks["polygon"] = DemoNetwork(
            "polygon",
            POLYGON.chain_id,
            url,
            "POL",
            CANONICAL_MULTICALL3,
            {"USDC": usdc, "USDT": usdt},
            feed,
        )
        chain.world.wallets.append(DemoWallet(WALLET, CUSTOMER, "polygon", HOLDER, {}))
        yield chain


def at_time(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def failure(call: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return raised.value


def details(error: aio.AioRpcError) -> tuple[str, list[str]]:
    """The ErrorInfo reason and the BadRequest fields of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


@asynccontextmanager
async def rest(stack: Stack) -> AsyncIterator[Gateway]:
    routes = routes_of(pb.DESCRIPTOR.services_by_name.values())
    limits = RestLimits(max_body_bytes=4096, body_read_timeout_seconds=1.0)
    runner, base = await serve_gateway(
        build_gateway_app(stack.channel, routes, limits, title="Balances")
    )
    try:
        async with aiohttp.ClientSession() as http:
            yield Gateway(base, http, {"X-API-Key": stack.api_key})
    finally:
        await runner.cleanup()


# --- every amount is the chain's at that block ----------------------------------------------


async def test_balances_at_each_block_equal_balance_of_there(
    history: History, tmp_path: Path
) -> None:
    blocks = [
        *history.before_aggregator,
        history.aggregator_block,
        *history.after_aggregator,
        *(b for b, _ in history.timed),
    ]
    async with running_stack(history.world, tmp_path) as stack, rest(stack) as gateway:
        seen = set()
        for block in blocks:
            usdc = format_amount(await history.balance_of(history.usdc, block), 6)
            usdt = format_amount(await history.balance_of(history.usdt, block), 6)
            seen.add(usdc)
            native = await rpc_call(history.url, "eth_getBalance", [HOLDER, hex(block)])
            pol = format_amount(int(native, 16), 18)
            wallet = await stack.stub.GetWalletBalance(
                pb.GetWalletBalanceRequest(wallet_id=WALLET, at_block=block)
            )
            assert wallet.block_number == block
            assert [(b.currency, b.amount) for b in wallet.balances] == [
                ("USDC", usdc),
                ("USDT", usdt),
                ("POL", pol),
            ]
            customer = await stack.stub.GetCustomerBalances(
                pb.GetCustomerBalancesRequest(customer_id=CUSTOMER, at_block=block)
            )
            (only,) = customer.wallets
            assert only.block_number == block
            assert [b.amount for b in only.balances][:2] == [usdc, usdt]
            # USDC and USDT are pegged at 1; POL (gas for a transfer) at the feed's $0.50.
            raw = await history.balance_of(history.usdc, block) + await history.balance_of(
                history.usdt, block
            )
            value = Decimal(raw) / 10**6 + Decimal(int(native, 16)) / 10**18 / 2
            total = value.quantize(Decimal("0.01"), ROUND_HALF_EVEN)
            assert customer.total_balance.amount == str(total)
            status, body, _ = await gateway.request(
                "GET", f"/v1/wallets/{WALLET}/balance?atBlock={block}"
            )
            assert status == 200, body
            assert body["blockNumber"] == str(block)
            assert [b["amount"] for b in body["balances"]][:2] == [usdc, usdt]
            status, body, _ = await gateway.request(
                "GET", f"/v1/customers/{CUSTOMER}/balances?atBlock={block}"
            )
            assert status == 200, body
            assert body["wallets"][0]["blockNumber"] == str(block)
        assert len(seen) >= 4  # the balance really changed along the way
        # "Now" still answers as before, at the head (confirmations 0).
        now = await stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=WALLET))
        assert now.block_number >= blocks[-1]


# --- a block before Multicall3 existed: one deployless eth_call, pinned ----------------------


async def test_a_block_before_the_aggregator_is_read_in_one_deployless_call(
    history: History, tmp_path: Path
) -> None:
    first, second = history.before_aggregator
    async with running_stack(history.world, tmp_path) as stack:
        proxy = stack.proxies["polygon"]
        response = await stack.stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id=WALLET, at_block=second)
        )
        assert response.balances[0].amount == "3.50"
        assert proxy.counts["eth_call"] == 1
        assert proxy.counts["eth_getCode"] == 1  # the aggregator's code at that block
        ((call, block),) = proxy.calls("eth_call")
        assert "to" not in call and block == hex(second)
        proxy.reset()
        # An older block: known to predate the aggregator, no eth_getCode.
        response = await stack.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id=CUSTOMER, at_block=first)
        )
        assert response.wallets[0].balances[0].amount == "1.00"
        # 1 USDC and 3 POL at $0.50 (anvil_setBalance changed that block's state).
        assert response.total_balance.amount == "2.50"
        assert proxy.counts["eth_call"] == 1 and proxy.counts["eth_getCode"] == 0
        proxy.reset()
        # From the aggregator's block on: the deployed one, by address.
        await stack.stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id=WALLET, at_block=history.aggregator_block)
        )
        ((call, block),) = proxy.calls("eth_call")
        assert call["to"].lower() == CANONICAL_MULTICALL3.lower()
        assert block == hex(history.aggregator_block)


# --- immutable snapshots come from the cache ---------------------------------------------------


async def test_a_final_block_is_served_from_the_cache_with_no_upstream_call(
    history: History, tmp_path: Path
) -> None:
    head, _ = await _head(history.url)
    final = head - 4
    async with running_stack(
        history.world,
        tmp_path,
        cache_ttl_seconds=0.001,  # "now" and shallow blocks expire at once
        network_changes={"polygon": {"confirmations": 2}},
    ) as stack:
        proxy = stack.proxies["polygon"]
        by_block = pb.GetWalletBalanceRequest(wallet_id=WALLET, at_block=final)
        first = await stack.stub.GetWalletBalance(by_block)
        assert proxy.counts["eth_call"] == 1
        proxy.reset()
        await asyncio.sleep(TTL_PASSED)
        assert await stack.stub.GetWalletBalance(by_block) == first
        assert sum(proxy.counts.values()) == 0  # no eth_blockNumber even
        block, seconds = history.timed[0]
        by_time = pb.GetCustomerBalancesRequest(customer_id=CUSTOMER, at_time=at_time(seconds))
        answer = await stack.stub.GetCustomerBalances(by_time)
        assert answer.wallets[0].block_number == block
        proxy.reset()
        await asyncio.sleep(TTL_PASSED)
        assert await stack.stub.GetCustomerBalances(by_time) == answer
        assert sum(proxy.counts.values()) == 0  # the time's block and the snapshot: cached
        # A block within the confirmation depth may still change: read again.
        shallow = pb.GetWalletBalanceRequest(wallet_id=WALLET, at_block=head)
        await stack.stub.GetWalletBalance(shallow)
        proxy.reset()
        await asyncio.sleep(TTL_PASSED)
        await stack.stub.GetWalletBalance(shallow)
        assert proxy.counts["eth_call"] == 1


# --- times resolve to the last block at or before them ------------------------------------------


async def test_at_time_resolves_to_the_last_block_at_or_before_it(
    history: History, tmp_path: Path
) -> None:
    (b1, t1), (b2, t2), (b3, t3), (b4, t4) = history.timed
    assert t2 == t3 and b3 == b2 + 1  # two blocks share a timestamp
    cases = [
        (t1, b1),  # exactly a block's time
        (t1 + 50, b1),  # between two blocks: the earlier
        (t2 - 1, b1),  # a second before the next block
        (t2, b3),  # a time two blocks share: the later of them
        (t4, b4),
        (t4 + 5, b4),  # before the next block (12 s later)
    ]
    async with running_stack(history.world, tmp_path) as stack, rest(stack) as gateway:
        for seconds, block in cases:
            wallet = await stack.stub.GetWalletBalance(
                pb.GetWalletBalanceRequest(wallet_id=WALLET, at_time=at_time(seconds))
            )
            assert (seconds, wallet.block_number) == (seconds, block)
            usdc = format_amount(await history.balance_of(history.usdc, block), 6)
            assert wallet.balances[0].amount == usdc
            status, body, _ = await gateway.request(
                "GET", f"/v1/customers/{CUSTOMER}/balances?atTime={iso(seconds)}"
            )
            assert status == 200, body
            assert body["wallets"][0]["blockNumber"] == str(block)
            assert body["wallets"][0]["balances"][0]["amount"] == usdc
        # Sub-second precision: still at or before.
        nanos = Timestamp(seconds=t2 - 1, nanos=999_999_999)
        wallet = await stack.stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id=WALLET, at_time=nanos)
        )
        assert wallet.block_number == b1
        # The first block's own time: the last block sharing it (anvil mines the first
        # few in the same second), where USDC may not exist yet (then it fails by name).
        sharing = 0
        while await _time_of(history.url, sharing + 1) == history.genesis_time:
            sharing += 1
        genesis = pb.GetWalletBalanceRequest(
            wallet_id=WALLET, at_time=at_time(history.genesis_time)
        )
        if sharing == 0:
            error = await failure(stack.stub.GetWalletBalance(genesis))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "USDC" in (error.details() or "")
        else:
            assert (await stack.stub.GetWalletBalance(genesis)).block_number == sharing


# --- refused: the future, before the first block -------------------------------------------------


async def test_a_future_block_or_time_or_one_before_genesis_is_invalid_argument(
    history: History, tmp_path: Path
) -> None:
    head, head_time = await _head(history.url)
    future = max(head_time, int(datetime.now(UTC).timestamp())) + 86_400
    async with running_stack(history.world, tmp_path) as stack, rest(stack) as gateway:
        cases: list[tuple[Any, str, str]] = [
            (
                stack.stub.GetWalletBalance(
                    pb.GetWalletBalanceRequest(wallet_id=WALLET, at_block=head + 1000)
                ),
                "at_block",
                "INVALID_AT_BLOCK",
            ),
            (
                stack.stub.GetCustomerBalances(
                    pb.GetCustomerBalancesRequest(customer_id=CUSTOMER, at_block=head + 1000)
                ),
                "at_block",
                "INVALID_AT_BLOCK",
            ),
            (
                stack.stub.GetWalletBalance(
                    pb.GetWalletBalanceRequest(wallet_id=WALLET, at_time=at_time(future))
                ),
                "at_time",
                "INVALID_AT_TIME",
            ),
            (
                stack.stub.GetCustomerBalances(
                    pb.GetCustomerBalancesRequest(
                        customer_id=CUSTOMER, at_time=at_time(history.genesis_time - 1)
                    )
                ),
                "at_time",
                "INVALID_AT_TIME",
            ),
        ]
        for call, field_name, reason in cases:
            error = await failure(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert details(error) == (reason, [field_name])
        for path, field_name, reason in (
            (f"/v1/wallets/{WALLET}/balance?atBlock={head + 1000}", "at_block", "INVALID_AT_BLOCK"),
            (
                f"/v1/customers/{CUSTOMER}/balances?atTime={iso(future)}",
                "at_time",
                "INVALID_AT_TIME",
            ),
        ):
            status, body, _ = await gateway.request("GET", path)
            assert status == 400, body
            infos = [d for d in body["details"] if d["@type"].endswith("ErrorInfo")]
            assert infos[0]["reason"] == reason and infos[0]["metadata"]["field"] == field_name
        # Both at once: REST refuses the second of a oneof, as grpc-gateway does.
        status, body, _ = await gateway.request(
            "GET", f"/v1/wallets/{WALLET}/balance?atBlock=1&atTime={iso(future)}"
        )
        assert status == 400, body


# --- a pruned node: FAILED_PRECONDITION, after every provider was asked ---------------------------


@asynccontextmanager
async def serving(
    world: DemoWorld, tmp_path: Path, urls: list[str]
) -> AsyncIterator[balances_pb2_grpc.BalancesServiceStub]:
    config = await write_stack_config(world, tmp_path, {"polygon": urls})
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(open_service(config.settings))
        server, port, _health = create_server(service, config.settings.listen)
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = keyed_channel(f"127.0.0.1:{port}", config.api_key)
        stack.push_async_callback(channel.close)
        yield balances_pb2_grpc.BalancesServiceStub(channel)


async def test_a_pruned_state_everywhere_is_failed_precondition_naming_an_archive_node(
    history: History, tmp_path: Path
) -> None:
    block = history.after_aggregator[0]
    async with (
        FaultProxy(history.url) as first,
        FaultProxy(history.url) as second,
        serving(history.world, tmp_path, [first.url, second.url]) as stub,
    ):
        await first.set_fault(Fault.MISSING_TRIE_NODE)
        # One provider pruned, the other not: answered by the other.
        response = await stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id=WALLET, at_block=block)
        )
        assert response.balances[0].amount == format_amount(
            await history.balance_of(history.usdc, block), 6
        )
        await second.set_fault(Fault.MISSING_TRIE_NODE)
        first.reset()
        second.reset()
        error = await failure(
            stub.GetCustomerBalances(
                pb.GetCustomerBalancesRequest(customer_id=CUSTOMER, at_block=block - 1)
            )
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert details(error)[0] == "ARCHIVE_NODE_REQUIRED"
        message = error.details() or ""
        assert "archive" in message and f"block {block - 1}" in message
        assert SECRET not in message and "127.0.0.1" not in message
        for proxy in (first, second):  # both were asked (the aggregator's code, or the call)
            assert proxy.counts["eth_getCode"] + proxy.counts["eth_call"] >= 1
        # Reads of "now" are not affected by the verdict (both nodes are up).
        await first.set_fault(None)
        await second.set_fault(None)
        now = await stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=WALLET))
        assert now.block_number >= block
