"""Watch streams over real sockets: a real server following a real anvil chain of our own.

Each test deploys its own polygon-like world on a fresh anvil node (anvil mines
one block per transaction; ``mine`` adds empty ones), runs a real server with
its block follower polling every 0.1 s, and moves funds there: the shared
``world`` is never touched.  eth_calls are counted by the stack's proxies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from eth_utils.address import to_checksum_address
from grpc import aio

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2, wallets_pb2_grpc
from service.api.services import API_SERVICES
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import (
    deploy_rebasing_token,
    dev_account,
    mine,
    mint,
    mint_shares,
    set_rebase_index,
    transfer,
)
from service.devchain.rpc import rpc_call
from service.devchain.world import POLYGON, DemoWallet, DemoWorld, deploy_network, fund_wallets
from service.domain import BalanceChange, BlockRef, Snapshot
from service.gateway.limits import RestLimits
from service.gateway.serve import start_gateway
from service.run import ServingPorts, serve
from service.settings import WatchSettings
from tests.support.stack import Stack, keyed_channel, running_stack, write_stack_config
from tests.support.watching import (
    Watch,
    changes_of,
    processed,
    until,
    watch_customer,
    watch_wallet,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLL = 0.1  # the followers' poll interval in these tests


def holder(n: int) -> str:
    return to_checksum_address(f"0x{0xA7C4:04x}{n:036x}")


WALLETS = [
    DemoWallet("wal_w1", "cus_w", "polygon", holder(1), {"USDC": 1_000_000, "POL": 10**18}),
    DemoWallet("wal_w2", "cus_w", "polygon", holder(2), {"USDC": 2_000_000}),
]


async def own_world(start_anvil: AnvilFactory) -> DemoWorld:
    """USDC, USDT, POL and a rebasing token RBT (6 decimals) on a fresh node; WALLETS funded."""
    node = start_anvil(POLYGON.chain_id)
    await node.start()
    world = DemoWorld()
    network = await deploy_network(POLYGON, node.url)
    network.tokens["RBT"] = await deploy_rebasing_token(node.url, "Rebasing", "RBT", 6)
    world.networks["polygon"] = network
    await fund_wallets(world, WALLETS)
    await mint_shares(node.url, network.tokens["RBT"], holder(2), 3_000_000)
    # The dev account holds USDC to send: a transfer changes only the receiver's USDC.
    await mint(node.url, network.tokens["USDC"], await dev_account(node.url), 10**12)
    return world


@asynccontextmanager
async def watching_stack(
    start_anvil: AnvilFactory, tmp_path: Path, confirmations: int = 0
) -> AsyncIterator[Stack]:
    world = await own_world(start_anvil)
    async with running_stack(
        world,
        tmp_path,
        network_changes={"polygon": {"confirmations": confirmations}},
        watch=WatchSettings(poll_interval_seconds=POLL),
    ) as stack:
        stack.service.start_watching()
        yield stack


def url(stack: Stack) -> str:
    return stack.world.networks["polygon"].rpc_url


def usdc(stack: Stack) -> str:
    return stack.world.networks["polygon"].tokens["USDC"]


async def head(stack: Stack) -> int:
    return int(await rpc_call(url(stack), "eth_blockNumber"), 16)


async def caught_up(stack: Stack) -> None:
    """Wait until the follower has processed the block at the read depth of the head."""
    depth = stack.settings.network("polygon").confirmations
    await processed(stack.service.followers["polygon"], max(await head(stack) - depth, 0))


async def send_usdc(stack: Stack, to: str, amount: int) -> int:
    """Transfer USDC from the dev account; the block it was mined in."""
    await transfer(url(stack), usdc(stack), await dev_account(url(stack)), to, amount)
    return await head(stack)


# --- detecting a transfer at the confirmation depth -----------------------------------------


@pytest.mark.parametrize("confirmations", [0, 2])
async def test_a_transfer_is_one_message_at_the_confirmation_depth_and_warms_the_cache(
    start_anvil: AnvilFactory, tmp_path: Path, confirmations: int
) -> None:
    async with watching_stack(start_anvil, tmp_path, confirmations) as stack:
        watch = Watch.start(watch_wallet(stack, "wal_w1"))
        first = await watch.next()
        assert first.initial and not first.changes and first.block_hash == ""
        assert {b.currency: b.amount for b in first.balances}["USDC"] == "1.00"
        await caught_up(stack)  # the follower has read its baseline
        mined_in = await send_usdc(stack, holder(1), 250_000)
        for _ in range(confirmations + 4):
            message = await watch.within(4 * POLL)
            if message is not None:
                break
            await mine(url(stack))  # one block at a time, each given 4 poll intervals
        else:
            pytest.fail("no message")
        lag = await head(stack) - mined_in
        print(f"confirmations={confirmations}: message when the head was {lag} blocks later")
        assert confirmations <= lag <= confirmations + 2
        assert message.block_number == mined_in
        header = await rpc_call(url(stack), "eth_getBlockByNumber", [hex(mined_in), False])
        assert message.block_hash == header["hash"]
        assert message.last_updated.seconds == int(header["timestamp"], 16)
        assert changes_of(message) == {"USDC": ("1.00", "1.25")}
        assert message.coalesced_updates == 0 and not message.initial
        # GetWalletBalance agrees with the event, from the cache the follower refreshed.
        stack.reset_counts()
        balance = await stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_w1"))
        assert {b.currency: b.amount for b in balance.balances}["USDC"] == "1.25"
        assert balance.block_number >= message.block_number
        assert stack.eth_calls()["polygon"] == 0
        # Exactly one message: more blocks bring nothing.
        await mine(url(stack), 3)
        await caught_up(stack)  # they were read, and changed nothing
        assert await watch.none_within(2 * POLL)
        watch.call.cancel()


# --- cost: one snapshot per block whatever the number of watchers ---------------------------


class RecordingListener:
    """Stands in for the webhook emitter: a ChangeListener and WatchedSource via add_watch."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.blocks: list[int] = []

    async def watched_addresses(self, network: str) -> set[str]:
        return {self.address}

    async def balances_changed(self, block: BlockRef, changes: Any, snapshot: Snapshot) -> None:
        assert all(isinstance(c, BalanceChange) for c in changes)
        self.blocks.append(block.number)


async def test_many_watchers_of_one_wallet_cost_one_snapshot_per_block(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        webhooks = RecordingListener(holder(1))
        for follower in stack.service.followers.values():
            follower.add_listener(webhooks)
            follower.add_source(webhooks)
        watches = [Watch.start(watch_wallet(stack, "wal_w1")) for _ in range(3)]
        customer = Watch.start(watch_customer(stack, "cus_w"))
        for watch in watches:
            assert (await watch.next()).initial
        first = await customer.next()
        assert first.initial and first.total_balance.currency == "USD"
        assert [w.wallet_id for w in first.wallets] == ["wal_w1", "wal_w2"]
        await caught_up(stack)  # the follower has read its baseline
        follower = stack.service.followers["polygon"]
        stack.reset_counts()
        reads_before = follower.snapshots_read
        blocks = []
        for i in range(5):
            blocks.append(await send_usdc(stack, holder(1), 10_000 * (i + 1)))
            for watch in watches:
                message = await watch.next()
                assert message.block_number == blocks[-1] and message.coalesced_updates == 0
            customer_message = await customer.next()
            assert [w.wallet_id for w in customer_message.wallets] == ["wal_w1"]
            assert customer_message.wallets[0].block_number == blocks[-1]
        await until(lambda: len(webhooks.blocks) == 5)
        snapshots = follower.snapshots_read - reads_before
        calls = stack.eth_calls()["polygon"]
        print(f"5 blocks, 3 wallet watches + 1 customer watch + 1 listener: {calls} eth_calls")
        # One eth_call per block, not one per watcher; and one for the customer total's POL
        # price at that block (wal_w1 holds POL), shared by every customer watch.
        assert snapshots == 5 and calls == 5 + 5
        assert webhooks.blocks == blocks
        for watch in [*watches, customer]:
            watch.call.cancel()


# --- a rebasing token: balances move without a Transfer event --------------------------------


async def test_a_rebase_without_transfer_event_is_reported(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        watch = Watch.start(watch_wallet(stack, "wal_w2"))
        first = await watch.next()
        assert {b.currency: b.amount for b in first.balances}["RBT"] == "3.00"
        await caught_up(stack)  # the follower has read its baseline
        token = stack.world.networks["polygon"].tokens["RBT"]
        await set_rebase_index(url(stack), token, 1_050_000_000_000_000_000)  # +5 %
        block = await head(stack)
        receipt_logs = await rpc_call(
            url(stack), "eth_getLogs", [{"fromBlock": hex(block), "toBlock": hex(block)}]
        )
        transfer_topic = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
        assert all(log["topics"][0] != transfer_topic for log in receipt_logs)
        message = await watch.next()
        assert changes_of(message) == {"RBT": ("3.00", "3.15")}
        assert message.block_number == block
        watch.call.cancel()


# --- a slow consumer over gRPC ----------------------------------------------------------------


async def test_slow_consumer_gets_the_latest_state_and_a_count_fast_one_every_update(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        fast = Watch.start(watch_wallet(stack, "wal_w1"))
        # A client that reads nothing lets the transport fill its flow-control window; keep
        # that window small so the server feels the back-pressure after a message or two.
        slow_channel = aio.insecure_channel(
            stack.target,
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 256)],
        )
        slow_call = pb_stub(slow_channel).WatchWalletBalance(
            pb.WatchWalletBalanceRequest(wallet_id="wal_w1"),
            metadata=(("x-api-key", stack.api_key),),
        )
        assert (await fast.next()).initial
        assert (await slow_call.read()).initial
        await caught_up(stack)  # the follower has read its baseline
        updates = 8
        for i in range(updates):
            block = await send_usdc(stack, holder(1), 1_000)
            message = await fast.next()
            assert message.block_number == block and message.coalesced_updates == 0
            assert changes_of(message)["USDC"][1] == f"1.{i + 1:03d}"
        # The slow one read nothing meanwhile: the transport holds what fits its window (one
        # message here), the mailbox only the latest state with the count of updates behind it.
        subscriptions = {s for w in stack.service.hub._by_address.values() for s in w}
        (mailbox,) = [(len(s._pending), s._updates) for s in subscriptions if s._pending]
        assert mailbox[0] == 1 and updates - 2 <= mailbox[1] <= updates
        received = []
        while not received or received[-1].block_number != block:
            received.append(await asyncio.wait_for(slow_call.read(), 5))
        counts = [m.coalesced_updates for m in received]
        print(f"slow consumer: {len(received)} messages for {updates} updates, coalesced {counts}")
        assert len(received) <= 3 and sum(1 + c for c in counts) == updates
        assert received[-1].coalesced_updates >= updates - 3
        assert changes_of(received[-1])["USDC"][1] == "1.008"
        assert changes_of(received[0])["USDC"][0] == "1.00"  # relative to what it was sent
        slow_call.cancel()
        fast.call.cancel()
        await slow_channel.close()


# --- ends: cancel, deletion, shutdown -------------------------------------------------------


async def test_client_cancel_ends_the_watch_and_frees_its_subscription(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        hub = stack.service.hub
        call = watch_wallet(stack, "wal_w1")
        assert (await call.read()).initial
        assert hub.subscriber_count() == 1
        assert call.cancel()
        await until(lambda: hub.subscriber_count() == 0)
        assert call.cancelled() and await call.code() == grpc.StatusCode.CANCELLED
        assert await hub.watched_addresses("polygon") == set()
        # The server goes on serving; other tenants' and unknown wallets are NOT_FOUND.
        bad = watch_wallet(stack, "wal_nobody")
        with pytest.raises(aio.AioRpcError) as caught:
            await bad.read()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        malformed = watch_wallet(stack, "x")
        with pytest.raises(aio.AioRpcError) as caught:
            await malformed.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        unauthenticated = pb_stub(stack.channel).WatchWalletBalance(
            pb.WatchWalletBalanceRequest(wallet_id="wal_w1")
        )
        with pytest.raises(aio.AioRpcError) as caught:
            await unauthenticated.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def pb_stub(channel: aio.Channel) -> Any:
    from balances.v1 import balances_pb2_grpc

    return balances_pb2_grpc.BalancesServiceStub(channel)


async def test_deleting_the_wallet_ends_its_watch_with_not_found(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        watch = Watch.start(watch_wallet(stack, "wal_w2"))
        customer = Watch.start(watch_customer(stack, "cus_w"))
        assert (await watch.next()).initial and (await customer.next()).initial
        wallets = wallets_pb2_grpc.WalletsServiceStub(stack.keyed)
        await wallets.DeleteWallet(
            wallets_pb2.DeleteWalletRequest(customer_id="cus_w", wallet_id="wal_w2")
        )
        await asyncio.wait_for(watch.ended.wait(), 5)
        assert watch.error is not None and watch.error.code() == grpc.StatusCode.NOT_FOUND
        assert "wal_w2" in (watch.error.details() or "")
        # The customer watch lists it once more, removed, and goes on with its other wallet.
        removal = await customer.next()
        assert [(w.wallet_id, w.removed) for w in removal.wallets] == [("wal_w2", True)]
        assert not customer.ended.is_set()
        await asyncio.sleep(3 * POLL)
        block = await send_usdc(stack, holder(1), 5_000)
        message = await customer.next()
        assert [(w.wallet_id, w.block_number) for w in message.wallets] == [("wal_w1", block)]
        customer.call.cancel()


async def test_shutdown_ends_open_watches_at_once_instead_of_waiting_out_the_grace(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    world = await own_world(start_anvil)
    config = await write_stack_config(
        world, tmp_path, {"polygon": [world.networks["polygon"].rpc_url]}
    )
    settings = config.settings  # grace_period_seconds = 5
    ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, on_ready=ready.set_result, stop=stop))
    ports = await asyncio.wait_for(ready, 10)
    async with keyed_channel(f"127.0.0.1:{ports.grpc}", config.api_key) as channel:
        watch = Watch.start(
            pb_stub(channel).WatchWalletBalance(
                pb.WatchWalletBalanceRequest(wallet_id="wal_w1"),
                metadata=(("x-api-key", config.api_key),),
            )
        )
        assert (await watch.next()).initial
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(watch.ended.wait(), 3)
        assert watch.error is None  # ended normally, status OK
        assert await watch.call.code() == grpc.StatusCode.OK
        await asyncio.wait_for(server, 5)
        elapsed = time.monotonic() - started
    print(f"shutdown with an open watch took {elapsed:.2f}s (grace 5s)")
    assert elapsed < 2


# --- REST: newline-delimited JSON ---------------------------------------------------------------


async def test_rest_watch_streams_result_lines_then_an_error_line(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        gateway = await start_gateway(stack.target, "127.0.0.1:0", API_SERVICES, RestLimits())
        base = f"http://127.0.0.1:{gateway.port}"
        headers = {"X-API-Key": stack.api_key}
        try:
            async with aiohttp.ClientSession() as http:
                # An error before the first message: its status, and one {"error"} line
                # (as grpc-gateway; changed from an ordinary error body).
                async with http.get(
                    f"{base}/v1/wallets/wal_nobody/balance:watch", headers=headers
                ) as r:
                    assert r.status == 404
                    body = (await r.json())["error"]
                    assert body["code"] == 5 and "wal_nobody" in body["message"]
                async with http.get(
                    f"{base}/v1/wallets/wal_w1/balance:watch", headers=headers
                ) as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("application/json")
                    first = json.loads(await asyncio.wait_for(r.content.readline(), 5))
                    assert set(first) == {"result"}
                    assert first["result"]["walletId"] == "wal_w1" and first["result"]["initial"]
                    await asyncio.sleep(3 * POLL)
                    block = await send_usdc(stack, holder(1), 500_000)
                    line = json.loads(await asyncio.wait_for(r.content.readline(), 5))
                    result = line["result"]
                    assert result["blockNumber"] == str(block)
                    assert result["changes"] == [
                        {
                            "currency": "USDC",
                            "previousAmount": "1.00",
                            "amount": "1.50",
                            "decimals": 6,
                        }
                    ]
                    assert result["coalescedUpdates"] == 0 and result["initial"] is False
                    wallets = wallets_pb2_grpc.WalletsServiceStub(stack.keyed)
                    await wallets.DeleteWallet(
                        wallets_pb2.DeleteWalletRequest(customer_id="cus_w", wallet_id="wal_w1")
                    )
                    line = json.loads(await asyncio.wait_for(r.content.readline(), 5))
                    error = line["error"]
                    assert (error["code"], error["message"]) == (5, "wallet wal_w1 not found")
                    assert error["details"][0] == {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "WALLET_NOT_FOUND",
                        "domain": "balances.v1",
                        "metadata": {"walletId": "wal_w1"},
                    }
                    assert await asyncio.wait_for(r.content.read(), 5) == b""  # the stream ended
                # A client that goes away cancels its watch.
                async with http.get(
                    f"{base}/v1/customers/cus_w/balances:watch", headers=headers
                ) as r:
                    first = json.loads(await asyncio.wait_for(r.content.readline(), 5))
                    assert first["result"]["customerId"] == "cus_w"
                    assert stack.service.hub.subscriber_count() == 1
            await until(lambda: stack.service.hub.subscriber_count() == 0)
        finally:
            await gateway.aclose()


async def test_follower_logs_a_node_outage_and_emits_the_net_change_once(
    start_anvil: AnvilFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    async with watching_stack(start_anvil, tmp_path) as stack:
        watch = Watch.start(watch_wallet(stack, "wal_w1"))
        assert (await watch.next()).initial
        await caught_up(stack)  # the follower has read its baseline
        stack.proxies["polygon"].fail_with = 503  # the node is unreachable for the service
        await send_usdc(stack, holder(1), 100_000)
        last = await send_usdc(stack, holder(1), 200_000)
        assert await watch.none_within(4 * POLL)
        stack.proxies["polygon"].fail_with = None
        message = await watch.next()
        assert message.block_number == last and message.coalesced_updates == 0
        assert changes_of(message) == {"USDC": ("1.00", "1.30")}  # the net change, once
        assert await watch.none_within(3 * POLL)
        assert "follower read failed" in caplog.text and "not read one by one" in caplog.text
        assert "SECRET-PROVIDER-KEY" not in caplog.text
        watch.call.cancel()
