"""Balance monitoring end to end: real anvil, real server, real HTTP receiver, public APIs.

Each test deploys its own small chain (a fresh anvil node: USDC, USDT, POL and a
rebasing token RBT) and runs the real server over it: the first test through
``serve()`` itself (gRPC and its REST gateway), the others through
``running_stack`` with ``service.start()`` (block followers polling every
0.1 s and the webhook delivery worker).  Tenant "default"'s webhook is pointed
at a real aiohttp receiver through ``WebhooksService`` (gRPC; REST in the first test).  Funds move between
two registered wallets of that tenant; what arrives at the receiver is verified
with the independent ``standardwebhooks`` package.  eth_calls are counted by the
stack's proxy between the server and anvil.

The sender pays gas in POL, so a transfer changes three (wallet, currency)
pairs: the sender's USDC and POL and the receiver's USDC.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from standardwebhooks import WebhookVerificationError

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2, wallets_pb2_grpc, webhooks_pb2_grpc
from balances.v1 import webhooks_pb2 as wpb
from service.auth.keys import new_api_key
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import (
    mine,
    set_rebase_index,
    transfer,
)
from service.devchain.rpc import rpc_call
from service.devchain.world import DemoWorld
from service.money import format_amount
from service.run import ServingPorts, serve
from service.settings import RestSettings
from service.store.sqlite import open_sqlite_stores
from tests.support.monitoring import (
    POLL,
    RECEIVER,
    SENDER,
    TRANSFER_TOPIC,
    collapsed,
    data_of,
    holder,
    monitored_world,
    verified,
    webhook_settings,
)
from tests.support.stack import Stack, keyed_channel, running_stack, write_stack_config
from tests.support.tenancy_kit import new_key
from tests.support.watching import Watch, changes_of, processed, watch_wallet
from tests.support.webhook_receiver import HOOK_PATH, WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@dataclass
class Monitor:
    """A running server over its own chain, with a receiver for tenant "default"."""

    stack: Stack
    receiver: WebhookReceiver
    webhooks: Any  # a WebhooksServiceStub of tenant "default" (grpc-stubs type it sync)

    @property
    def url(self) -> str:
        return self.stack.world.networks["polygon"].rpc_url

    @property
    def confirmations(self) -> int:
        return self.stack.settings.network("polygon").confirmations

    async def head(self) -> int:
        return int(await rpc_call(self.url, "eth_blockNumber"), 16)

    async def header(self, number: int) -> dict[str, Any]:
        header: dict[str, Any] = await rpc_call(
            self.url, "eth_getBlockByNumber", [hex(number), False]
        )
        return header

    async def configure(self) -> str:
        """Point tenant "default"'s webhook at the receiver (gRPC); its secret."""
        created = await self.webhooks.UpdateWebhookConfig(
            wpb.UpdateWebhookConfigRequest(url=self.receiver.url, events=["balance.updated"])
        )
        assert created.created and created.secret.startswith("whsec_")
        return str(created.secret)

    async def caught_up(self, timeout: float = 5.0) -> int:
        """Wait until the follower has processed the block at the read depth of the head."""
        target = max(await self.head() - self.confirmations, 0)
        await processed(self.stack.service.followers["polygon"], target, timeout)
        return target

    async def quiet(self, timeout: float = 5.0) -> None:
        """Wait until no webhook is coming: the follower has processed the head's block at
        the read depth (its events are in the outbox) and no event there is pending."""
        await self.caught_up()
        webhooks = self.stack.service.stores.webhooks
        async with asyncio.timeout(timeout):
            while True:
                events = await webhooks.webhook_events()
                if all(e.status != "pending" for e in events):
                    return
                await asyncio.sleep(0.02)

    async def settle(self) -> None:
        """Two processed blocks: whatever was configured before is now followed (baselined)."""
        for _ in range(2):
            await mine(self.url)
            await self.caught_up()

    async def send(self, amount: int, token: str = "USDC") -> int:
        """``amount`` of ``token`` from SENDER to RECEIVER; the block it was mined in."""
        network = self.stack.world.networks["polygon"]
        await transfer(self.url, network.tokens[token], SENDER.address, RECEIVER.address, amount)
        return await self.head()

    async def pol(self, address: str, block: int) -> int:
        return int(await rpc_call(self.url, "eth_getBalance", [address, hex(block)]), 16)


@asynccontextmanager
async def monitoring(
    start_anvil: AnvilFactory,
    tmp_path: Path,
    *,
    confirmations: int = 0,
    also: tuple[WebhookReceiver, ...] = (),  # more development receivers, already started
) -> AsyncIterator[Monitor]:
    world = await monitored_world(start_anvil)
    if confirmations:  # the funding is below the read depth: it is the baseline, not news
        await mine(world.networks["polygon"].rpc_url, confirmations)
    async with (
        WebhookReceiver() as receiver,  # closed after the server, so no send is cut off
        running_stack(
            world,
            tmp_path,
            network_changes={"polygon": {"confirmations": confirmations}},
            **webhook_settings(receiver, *also),
        ) as stack,
    ):
        await stack.service.start()
        yield Monitor(stack, receiver, webhooks_pb2_grpc.WebhooksServiceStub(stack.keyed))


async def wallet_balance(stack: Stack, wallet_id: str) -> Any:
    stub: Any = stack.stub  # grpc-stubs type aio stubs as sync
    return await stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=wallet_id))


def amounts(message: Any) -> dict[str, str]:
    return {b.currency: b.amount for b in message.balances}


def since(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# --- 1. configuration through the real API, on the real ``serve()`` ------------------------


@asynccontextmanager
async def serving(
    world: DemoWorld, tmp_path: Path, receiver: WebhookReceiver
) -> AsyncIterator[tuple[ServingPorts, str, str]]:
    """``serve()`` in this process with gRPC and REST over ``world``; (ports, key of
    tenant "default", key of tenant "other").  Stopped as on SIGTERM at exit."""
    config = await write_stack_config(
        world,
        tmp_path,
        {"polygon": [world.networks["polygon"].rpc_url]},
        rest=RestSettings(listen="127.0.0.1:0"),
        **webhook_settings(receiver),
    )
    settings = config.settings
    other = new_api_key()
    stores = await open_sqlite_stores(settings.directory_path)
    try:
        await stores.api_keys.add_key(other.key_id, "other", other.digest)
    finally:
        await stores.aclose()
    ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, on_ready=ready.set_result, stop=stop))
    try:
        either: set[asyncio.Future[Any]] = {ready, server}
        await asyncio.wait(either, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()  # serve() failed to start: its error
        yield ready.result(), config.api_key, other.plaintext
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


async def test_webhook_config_through_grpc_and_rest_on_serve_shows_the_secret_once(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    world = await monitored_world(start_anvil)
    async with (
        WebhookReceiver() as receiver,
        serving(world, tmp_path, receiver) as (ports, key, other_key),
        keyed_channel(f"127.0.0.1:{ports.grpc}", key) as channel,
        aiohttp.ClientSession() as http,
    ):
        hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            await hooks.GetWebhookConfig(wpb.GetWebhookConfigRequest())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        for refused in (
            f"http://localhost:{receiver.port}{HOOK_PATH}",  # local, but not on the allowlist
            "http://hooks.example.com/in",
            f"ftp://127.0.0.1:{receiver.port}/in",
        ):
            with pytest.raises(aio.AioRpcError) as caught:
                await hooks.UpdateWebhookConfig(wpb.UpdateWebhookConfigRequest(url=refused))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused not in (caught.value.details() or "")
        with pytest.raises(aio.AioRpcError) as caught:  # nothing was stored
            await hooks.GetWebhookConfig(wpb.GetWebhookConfigRequest())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        created = await hooks.UpdateWebhookConfig(
            wpb.UpdateWebhookConfigRequest(url=receiver.url, events=["balance.updated"])
        )
        assert created.created and created.secret.startswith("whsec_")
        assert created.config.url == receiver.url
        assert list(created.config.events) == ["balance.updated"]
        secret = created.secret
        got = await hooks.GetWebhookConfig(wpb.GetWebhookConfigRequest())
        assert got.config == created.config
        assert b"whsec_" not in got.SerializeToString()
        changed = await hooks.UpdateWebhookConfig(
            wpb.UpdateWebhookConfigRequest(url=receiver.url + "?v=2")
        )
        assert not changed.created and changed.secret == ""  # shown once: not again
        assert changed.config.url == receiver.url + "?v=2"

        # REST, as tenant "other" (its own key): a separate config, PATCH /v1/webhooks.
        base = f"http://127.0.0.1:{ports.rest}/v1/webhooks"
        headers = {"X-API-Key": other_key}
        async with http.get(base, headers=headers) as r:
            assert r.status == 404 and (await r.json())["code"] == 5
        refused_body = {"url": "http://hooks.example.com/in", "events": ["balance.updated"]}
        async with http.patch(base, headers=headers, json=refused_body) as r:
            body = await r.json()
            assert r.status == 400 and body["code"] == 3 and "https" in body["message"]
        async with http.patch(base, json={"url": receiver.url}) as r:
            assert r.status == 401  # no key
        async with http.patch(
            base, headers=headers, json={"url": receiver.url, "events": ["balance.updated"]}
        ) as r:
            body = await r.json()
            assert r.status == 200, body
        assert body["created"] is True and body["secret"].startswith("whsec_")
        assert body["secret"] != secret
        assert body["config"]["url"] == receiver.url
        assert body["config"]["events"] == ["balance.updated"]
        async with http.get(base, headers=headers) as r:
            assert r.status == 200
            text = await r.text()
        assert set(json.loads(text)) == {"url", "events", "createTime", "updateTime"}
        assert "whsec_" not in text
        # Tenant "default"'s config is untouched by "other"'s.
        assert (await hooks.GetWebhookConfig(wpb.GetWebhookConfigRequest())).config == (
            changed.config
        )

        # serve() started the followers and the delivery worker: a transfer arrives.
        url = world.networks["polygon"].rpc_url
        await mine(url)
        await asyncio.sleep(5 * POLL)  # the follower's baseline, with the config in place
        usdc = world.networks["polygon"].tokens["USDC"]
        await transfer(url, usdc, SENDER.address, RECEIVER.address, 10_000)
        await receiver.wait_until(lambda: len(receiver.received) == 3)
        delivered = {
            (data["wallet_id"], data["currency"])
            for data in (verified(secret, hit)["data"] for hit in receiver.received)
        }
        assert delivered == {
            (SENDER.wallet_id, "USDC"),
            (SENDER.wallet_id, "POL"),
            (RECEIVER.wallet_id, "USDC"),
        }


# --- 2. a transfer: one stream message, one signed webhook per changed currency -------------


async def test_a_transfer_is_one_stream_message_and_one_signed_webhook_per_change_at_depth(
    start_anvil: AnvilFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="service")
    async with monitoring(start_anvil, tmp_path, confirmations=2) as m:
        secret = await m.configure()
        await m.settle()
        watch = Watch.start(watch_wallet(m.stack, SENDER.wallet_id))
        first = await watch.next()
        assert (
            first.initial and amounts(first)["USDC"] == "1.00" and amounts(first)["POL"] == "1.00"
        )

        mined_in = await m.send(250_000)
        arrived_at: int | None = None
        for lag in range(m.confirmations + 3):
            if lag:
                await mine(m.url)  # one block at a time
            await m.caught_up()  # the follower read the block at the depth of this head
            if lag < m.confirmations:
                await asyncio.sleep(3 * POLL)  # time enough for a send, were one due
                assert m.receiver.arrived == 0, f"a webhook before the depth (lag {lag})"
                assert watch.messages.empty()
                continue
            try:
                await m.receiver.wait_until(lambda: len(m.receiver.received) == 3, timeout=1)
            except TimeoutError:
                continue
            arrived_at = lag
            break
        assert arrived_at is not None, "no webhook within two blocks of the confirmation depth"
        print(f"\n[confirmations=2] webhooks arrived when the head was {arrived_at} blocks on")
        assert m.confirmations <= arrived_at <= m.confirmations + 2

        header = await m.header(mined_in)
        sender_pol = await m.pol(SENDER.address, mined_in)
        assert sender_pol < 10**18  # the gas
        expected = {
            (SENDER.wallet_id, "USDC"): ("1.00", "0.75"),
            (SENDER.wallet_id, "POL"): ("1.00", format_amount(sender_pol, 18)),
            (RECEIVER.wallet_id, "USDC"): ("2.00", "2.25"),
        }
        received = m.receiver.received
        assert len({r.event_id for r in received}) == 3
        for r in received:
            assert r.status == 200
            body = verified(secret, r)
            assert body["type"] == "balance.updated"
            assert abs(body["createdAt"] / 1000 - time.time()) < 60
            data = body["data"]
            key = (data["wallet_id"], data["currency"])
            assert (data["previous_balance"], data["balance"]) == expected.pop(key)
            assert data["customer_id"] == "cus_acme" and data["network"] == "polygon"
            assert data["block_number"] == mined_in and data["block_hash"] == header["hash"]
            stamp = datetime.fromtimestamp(int(header["timestamp"], 16), UTC)
            assert data["timestamp"] == stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
            with pytest.raises(WebhookVerificationError):
                verified("whsec_" + "A" * 43 + "=", r)
        assert expected == {}  # exactly one per changed (wallet, currency)

        message = await watch.next()
        assert not message.initial and message.coalesced_updates == 0
        assert message.block_number == mined_in and message.block_hash == header["hash"]
        assert changes_of(message) == {
            "USDC": ("1.00", "0.75"),
            "POL": ("1.00", format_amount(sender_pol, 18)),
        }
        # GetWalletBalance right after agrees with the event (the follower refreshed the cache).
        balance = await wallet_balance(m.stack, SENDER.wallet_id)
        assert amounts(balance)["USDC"] == "0.75"
        assert amounts(balance)["POL"] == format_amount(sender_pol, 18)
        assert balance.block_number >= mined_in

        # Exactly once: more blocks bring no further message or webhook.
        for _ in range(3):
            await mine(m.url)
            await m.caught_up()
        await asyncio.sleep(3 * POLL)
        assert watch.messages.empty() and len(m.receiver.received) == 3
        watch.call.cancel()
    # Neither the secret nor the receiver's path (it may hold a token) was logged.
    assert "webhook event" in caplog.text
    assert secret not in caplog.text and HOOK_PATH not in caplog.text


# --- 3. cost: one eth_call per block for two watchers and a webhook -------------------------


async def test_two_watchers_and_a_webhook_cost_one_eth_call_per_block(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with monitoring(start_anvil, tmp_path) as m:
        secret = await m.configure()
        await m.settle()
        watches = [Watch.start(watch_wallet(m.stack, SENDER.wallet_id)) for _ in range(2)]
        for watch in watches:
            assert (await watch.next()).initial
        proxy = m.stack.proxies["polygon"]
        proxy.reset()
        per_block: list[int] = []
        transfers: list[int] = []
        for i in range(6):  # transfers in every other block, empty blocks between
            before = proxy.counts["eth_call"]
            if i % 2 == 0:
                transfers.append(await m.send(1_000))
            else:
                await mine(m.url)
            await m.caught_up()
            per_block.append(proxy.counts["eth_call"] - before)
            if i % 2 == 0:
                for watch in watches:
                    message = await watch.next()
                    assert message.block_number == transfers[-1]
        await m.receiver.wait_until(lambda: len(m.receiver.received) == 3 * len(transfers))
        await asyncio.sleep(3 * POLL)  # no new block: no read at all
        others = {k: v for k, v in proxy.counts.items() if k != "eth_call"}
        print(f"\n[2 watches + webhook] eth_calls per block: {per_block}; other calls: {others}")
        assert per_block == [1] * 6
        assert proxy.counts["eth_call"] == 6
        blocks = sorted({data_of(r)["block_number"] for r in m.receiver.received})
        assert blocks == transfers
        for r in m.receiver.received:
            verified(secret, r)
        for watch in watches:
            assert watch.messages.empty()
            watch.call.cancel()


# --- 4. receiver down, then up -------------------------------------------------------------


async def test_receiver_down_across_two_transfers_then_up_delivers_both_in_order(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with monitoring(start_anvil, tmp_path) as m:
        secret = await m.configure()
        await m.settle()
        m.receiver.status = 503
        first = await m.send(100_000)
        # Both wallets' first events are tried (and refused) before the second transfer.
        await m.receiver.wait_until(lambda: len(m.receiver.received) >= 2)
        second = await m.send(200_000)
        await m.caught_up()  # its events are in the outbox, behind the refused ones
        await m.receiver.wait_until(lambda: len(m.receiver.received) >= 4)
        refused = list(m.receiver.received)
        m.receiver.status = 200
        await m.receiver.wait_until(lambda: len(m.receiver.acknowledged()) == 6)
        await m.quiet()  # nothing more is coming

        received = m.receiver.received
        acknowledged = m.receiver.acknowledged()
        print(
            f"\n[receiver 503] 6 events, {len(received)} requests ({len(refused)} refused),"
            f" {len(received) - len(refused)} after it came back"
        )
        assert all(r.status == 503 for r in refused)
        assert all(data_of(r)["block_number"] == first for r in refused)  # later ones waited
        assert len(received) - len(refused) == 6  # once each after the receiver came back
        # One webhook-id per event, the same on every retry, the body byte-identical.
        events: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        bodies: dict[str, set[bytes]] = defaultdict(set)
        for r in received:
            data = verified(secret, r)["data"]
            events[data["wallet_id"], data["currency"], data["block_number"]].add(r.event_id)
            bodies[r.event_id].add(r.body)
        assert all(len(ids) == 1 for ids in events.values())
        assert all(len(b) == 1 for b in bodies.values())
        assert sorted(events) == sorted(
            (w, c, b)
            for b in (first, second)
            for w, c in [
                (SENDER.wallet_id, "USDC"),
                (SENDER.wallet_id, "POL"),
                (RECEIVER.wallet_id, "USDC"),
            ]
        )
        assert set(acknowledged) == {next(iter(ids)) for ids in events.values()}
        assert {r.event_id for r in refused} <= set(acknowledged)  # retried under its own ID
        # In order per wallet: no event of the second block before all of the first,
        # and no event sent again once a later one of that wallet was sent.
        for wallet in (SENDER.wallet_id, RECEIVER.wallet_id):
            mine_ = [r for r in received if data_of(r)["wallet_id"] == wallet]
            ids = collapsed([r.event_id for r in mine_])
            assert len(ids) == len(set(ids))
            numbers = [data_of(r)["block_number"] for r in mine_]
            assert numbers == sorted(numbers)
        usdc = [data_of(r) for r in acknowledged.values() if data_of(r)["currency"] == "USDC"]
        by_wallet = {
            (d["wallet_id"], d["block_number"]): (d["previous_balance"], d["balance"]) for d in usdc
        }
        assert by_wallet == {
            (SENDER.wallet_id, first): ("1.00", "0.90"),
            (SENDER.wallet_id, second): ("0.90", "0.70"),
            (RECEIVER.wallet_id, first): ("2.00", "2.10"),
            (RECEIVER.wallet_id, second): ("2.10", "2.30"),
        }


# --- 5. a rebasing token: no Transfer event --------------------------------------------------


async def test_a_rebase_without_transfer_event_is_a_webhook_with_the_rebased_amount(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with monitoring(start_anvil, tmp_path) as m:
        secret = await m.configure()
        await m.settle()
        token = m.stack.world.networks["polygon"].tokens["RBT"]
        await set_rebase_index(m.url, token, 1_050_000_000_000_000_000)  # +5 %
        block = await m.head()
        logs = await rpc_call(
            m.url, "eth_getLogs", [{"fromBlock": hex(block), "toBlock": hex(block)}]
        )
        assert all(entry["topics"][0] != TRANSFER_TOPIC for entry in logs)
        await m.receiver.wait_until(lambda: len(m.receiver.received) == 1)
        await mine(m.url)
        await m.quiet()  # nothing more is coming
        (received,) = m.receiver.received
        data = verified(secret, received)["data"]
        assert (data["wallet_id"], data["currency"]) == (RECEIVER.wallet_id, "RBT")
        assert (data["previous_balance"], data["balance"]) == ("3.00", "3.15")
        assert data["block_number"] == block
        assert data["block_hash"] == (await m.header(block))["hash"]
        balance = await wallet_balance(m.stack, RECEIVER.wallet_id)
        assert amounts(balance)["RBT"] == "3.15"


# --- 6. replay -------------------------------------------------------------------------------


async def test_replay_over_grpc_redelivers_with_the_same_webhook_id(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with monitoring(start_anvil, tmp_path) as m:
        secret = await m.configure()
        await m.settle()
        started = datetime.now(UTC) - timedelta(seconds=1)
        await m.send(50_000)
        await m.receiver.wait_until(lambda: len(m.receiver.acknowledged()) == 3)
        await m.quiet()  # nothing more is coming
        original = {r.event_id: r for r in m.receiver.received}
        assert len(original) == 3 and len(m.receiver.received) == 3

        later = await m.webhooks.ReplayWebhookEvents(
            wpb.ReplayWebhookEventsRequest(since=since(datetime.now(UTC) + timedelta(hours=1)))
        )
        assert later.requeued_count == 0
        with pytest.raises(aio.AioRpcError) as caught:
            await m.webhooks.ReplayWebhookEvents(wpb.ReplayWebhookEventsRequest())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        replayed = await m.webhooks.ReplayWebhookEvents(
            wpb.ReplayWebhookEventsRequest(since=since(started))
        )
        assert replayed.requeued_count == 3
        await m.receiver.wait_until(lambda: len(m.receiver.received) == 6)
        await m.quiet()  # nothing more is coming
        again = m.receiver.received[3:]
        assert len(m.receiver.received) == 6
        assert sorted(r.event_id for r in again) == sorted(original)
        for r in again:
            assert r.status == 200
            assert r.body == original[r.event_id].body  # the same event, byte for byte
            verified(secret, r)  # signed again, with a fresh timestamp


# --- 7. tenants ------------------------------------------------------------------------------


async def test_another_tenants_webhook_is_separate_and_gets_only_its_own_wallets(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with (
        WebhookReceiver() as b_receiver,  # first: its port goes into the config
        monitoring(start_anvil, tmp_path, also=(b_receiver,)) as m,
    ):
        a_secret = await m.configure()
        b_key = await new_key(m.stack, "other")
        async with keyed_channel(m.stack.target, b_key) as b_channel:
            b_hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(b_channel)
            with pytest.raises(aio.AioRpcError) as caught:
                await b_hooks.GetWebhookConfig(wpb.GetWebhookConfigRequest())
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # A's is not B's
            b_wallets: Any = wallets_pb2_grpc.WalletsServiceStub(b_channel)
            # B holds the very address of A's receiving wallet, and one nobody pays.
            same = await b_wallets.ImportWallet(
                wallets_pb2.ImportWalletRequest(
                    customer_id="cus_other", network="polygon", address=RECEIVER.address
                )
            )
            idle = await b_wallets.ImportWallet(
                wallets_pb2.ImportWalletRequest(
                    customer_id="cus_other", network="polygon", address=holder(9)
                )
            )
            assert same.created and idle.created
            created = await b_hooks.UpdateWebhookConfig(
                wpb.UpdateWebhookConfigRequest(url=b_receiver.url)
            )
            b_secret = created.secret
            assert created.created and b_secret != a_secret
            assert (await b_hooks.GetWebhookConfig(wpb.GetWebhookConfigRequest())).config.url == (
                b_receiver.url
            )
            a_config = await m.webhooks.GetWebhookConfig(wpb.GetWebhookConfigRequest())
            assert a_config.config.url == m.receiver.url
            await m.settle()

            started = datetime.now(UTC) - timedelta(seconds=1)
            block = await m.send(300_000)
            await m.receiver.wait_until(lambda: len(m.receiver.received) == 3)
            await b_receiver.wait_until(lambda: len(b_receiver.received) == 1)
            await mine(m.url)
            await m.quiet()  # nothing more is coming

            a_wallets = {data_of(r)["wallet_id"] for r in m.receiver.received}
            assert a_wallets == {SENDER.wallet_id, RECEIVER.wallet_id}
            assert len(m.receiver.received) == 3
            (b_got,) = b_receiver.received
            data = verified(b_secret, b_got)["data"]
            assert (data["wallet_id"], data["customer_id"], data["currency"]) == (
                same.wallet.wallet_id,
                "cus_other",
                "USDC",
            )
            assert (data["previous_balance"], data["balance"], data["block_number"]) == (
                "2.00",
                "2.30",
                block,
            )
            with pytest.raises(WebhookVerificationError):
                verified(a_secret, b_got)  # signed with B's secret, not A's
            for r in m.receiver.received:
                verified(a_secret, r)
                with pytest.raises(WebhookVerificationError):
                    verified(b_secret, r)
            # Replay is tenant-scoped too: B's replays B's event only.
            replayed = await b_hooks.ReplayWebhookEvents(
                wpb.ReplayWebhookEventsRequest(since=since(started))
            )
            assert replayed.requeued_count == 1
            await b_receiver.wait_until(lambda: len(b_receiver.received) == 2)
            await m.quiet()  # nothing more is coming
            assert b_receiver.received[1].event_id == b_got.event_id
            assert len(m.receiver.received) == 3
