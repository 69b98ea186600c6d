"""Three ``balances serve`` replicas on one PostgreSQL and one Redis: issue 12's proof.

One fresh anvil chain behind a counting JSON-RPC proxy; three real ``balances
serve`` processes (each its own process group) on one TOML file naming the
PostgreSQL directory and the Redis cache; a slow webhook receiver.  Shown:

- every replica gives the same answers;
- 300 concurrent cold ``GetWalletBalance`` calls spread over the replicas cost
  one upstream ``eth_call`` (the cluster-wide single-flight);
- 100 transfers, the leading replica killed with ``kill -9`` in the middle of
  them: every change is delivered, no ``webhook-id`` carries two payloads, no
  change is sent under two ids, each wallet's events arrive in block order
  with an unbroken previous -> new chain;
- a watch stream on a replica that does not lead gets every change, before and
  after the leader's death.

The transfers come from an unregistered dev account, so each one changes
exactly one registered balance: one change, one event, per transfer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from grpc import StatusCode, aio
from standardwebhooks import Webhook

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc, wallets_pb2_grpc, webhooks_pb2_grpc
from balances.v1 import wallets_pb2 as wpb_wallets
from balances.v1 import webhooks_pb2 as wpb
from service.auth.keys import key_id_of
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mint, transfer
from service.devchain.rpc import rpc_call
from service.devchain.world import POLYGON, DemoWallet, DemoWorld, deploy_network, fund_wallets
from service.settings import WatchSettings, WebhookSettings
from service.settings.model import LimitsSettings
from tests.support.cli import run_balances
from tests.support.monitoring import collapsed, holder
from tests.support.replicas import leads, one_leader, wait_for
from tests.support.rpc_proxy import CountingProxy
from tests.support.serving import Served, kill_9, start_serving
from tests.support.stack import keyed_channel, write_stack_config
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLL = 0.1  # [watch] poll_interval_seconds: also how often a replica contends for a lease
LEASE = 2.0  # [cluster] lease_seconds
TRANSFERS = 100
KILL_AT = 40  # the leader dies right after this many transfers
RECEIVER_DELAY = 0.3  # the receiver takes this long to answer each send: a backlog at the kill
BURST = 300
A = DemoWallet("wal_a", "cus_acme", "polygon", holder(0xA), {"USDC": 5_000_000})
B = DemoWallet("wal_b", "cus_acme", "polygon", holder(0xB), {"USDC": 7_000_000})


def amount(n: int) -> int:
    """The n-th transfer's USDC base units: distinct, so every balance in a run differs."""
    return 10_000 + n


def shown(raw: int) -> str:
    """USDC base units (6 decimals) as the API shows them (two places at least)."""
    text = format(Decimal(raw).scaleb(-6), "f")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


async def refused_everywhere(
    stubs: list[Any], request: Any, metadata: Any, code: StatusCode
) -> float:
    """Seconds until every replica answers ``request`` with ``code`` (asserted: a few)."""
    started = time.monotonic()
    waiting = list(stubs)
    while waiting:
        assert time.monotonic() - started < 10, f"still answered after 10 s, not {code}"
        still = []
        for stub in waiting:
            try:
                await stub.GetWalletBalance(request, metadata=metadata)
                still.append(stub)
            except aio.AioRpcError as error:
                assert error.code() == code, error
        waiting = still
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def outbox_rows(database: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await database.fetch(
        "SELECT event_id, wallet_id, currency, block_number, block_hash, payload"
        " FROM webhook_outbox ORDER BY seq"
    )
    return rows


async def test_three_replicas_share_reads_survive_a_leader_kill_and_stream_everywhere(
    start_anvil: AnvilFactory, tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    node = start_anvil(POLYGON.chain_id)
    await node.start()
    world = DemoWorld()
    world.networks["polygon"] = await deploy_network(POLYGON, node.url)
    await fund_wallets(world, [A, B])
    url = node.url
    usdc = world.networks["polygon"].tokens["USDC"]
    payer = (await rpc_call(url, "eth_accounts"))[0]  # unregistered: pays gas, moves USDC
    await mint(url, usdc, payer, 10**12)
    replicas: list[Served] = []

    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(WebhookReceiver(delay=RECEIVER_DELAY))
        proxy = await stack.enter_async_context(CountingProxy(url))
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [proxy.url]},
            network_changes={"polygon": {"confirmations": 0}},
            directory_url=postgres_url,
            cache_redis_url=redis_url,
            cluster_lease_seconds=LEASE,
            cache_ttl_seconds=60,
            watch=WatchSettings(poll_interval_seconds=POLL),
            webhooks=WebhookSettings(
                allow_http_hosts=(f"127.0.0.1:{receiver.port}",),
                timeout_seconds=5,
                retry_schedule_seconds=(0.2, 0.5, *(1.0,) * 30),
            ),
            limits=LimitsSettings(requests_per_second=100_000, burst=100_000, max_in_flight=4096),
        )

        async def kill_leftovers() -> None:
            for served in replicas:
                if served.process.returncode is None:
                    await kill_9(served)

        stack.push_async_callback(kill_leftovers)  # before the proxy and receiver close
        for _ in range(3):
            replicas.append(await start_serving(config.path))
        channels = [
            await stack.enter_async_context(keyed_channel(f"127.0.0.1:{r.port}", config.api_key))
            for r in replicas
        ]
        stubs = [balances_pb2_grpc.BalancesServiceStub(c) for c in channels]
        leader = await one_leader(replicas)
        others = [i for i in range(3) if i != leader]

        # --- 300 concurrent cold calls over the replicas: one upstream read ------------------
        proxy.reset()
        answers = await asyncio.gather(
            *(
                stubs[n % 3].GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=A.wallet_id))
                for n in range(BURST)
            )
        )
        burst_calls = proxy.counts["eth_call"]
        assert burst_calls == 1, proxy.counts
        assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
        usdc_of_a = {b.currency: b.amount for b in answers[0].balances}["USDC"]
        assert usdc_of_a == "5.00"

        # --- identical answers from every replica ---------------------------------------------
        customers = await asyncio.gather(
            *(
                s.GetCustomerBalances(pb.GetCustomerBalancesRequest(customer_id="cus_acme"))
                for s in stubs
            )
        )
        assert len({c.SerializeToString(deterministic=True) for c in customers}) == 1
        assert customers[0].total_balance.amount == "12.00"  # 5 + 7 USDC, no native coin

        # --- a stream on a replica that does not lead; a webhook config ------------------------
        streamed: list[Any] = []
        stream = stubs[others[0]].WatchWalletBalance(
            pb.WatchWalletBalanceRequest(wallet_id=A.wallet_id)
        )

        async def read_stream() -> None:
            async for message in stream:
                streamed.append(message)

        reading = asyncio.create_task(read_stream())
        stack.callback(reading.cancel)
        stack.callback(stream.cancel)
        await wait_for(lambda: len(streamed) >= 1, "the stream's first message")
        hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channels[others[1]])
        created = await hooks.UpdateWebhookConfig(
            wpb.UpdateWebhookConfigRequest(url=receiver.url, events=["balance.updated"]),
            timeout=10,
        )
        secret = created.secret
        database = await asyncpg.connect(postgres_url)
        stack.push_async_callback(database.close)

        # --- 100 transfers; the leader killed after KILL_AT of them ----------------------------
        expected: dict[str, list[tuple[int, int]]] = {A.wallet_id: [], B.wallet_id: []}
        held = {A.wallet_id: 5_000_000, B.wallet_id: 7_000_000}
        # Give the follower time to baseline both (now watched) wallets before they change.
        await asyncio.sleep(10 * POLL)
        killed_at = takeover = 0.0
        for n in range(1, TRANSFERS + 1):
            wallet = A if n % 2 else B
            await transfer(url, usdc, payer, wallet.address, amount(n))
            block = int(await rpc_call(url, "eth_blockNumber"), 16)
            held[wallet.wallet_id] += amount(n)
            expected[wallet.wallet_id].append((block, held[wallet.wallet_id]))
            # One event per transfer: wait for it, so no two transfers share a read.
            deadline = time.monotonic() + 30
            while len(await outbox_rows(database)) < n:
                assert time.monotonic() < deadline, f"transfer {n}: no event within 30 s"
                await asyncio.sleep(0.02)
            if n == KILL_AT + 1:
                takeover = time.monotonic() - killed_at  # kill -> the next change's event
            if n == KILL_AT:
                killed_at = time.monotonic()
                await kill_9(replicas[leader])
        took_over = [i for i in others if leads(replicas[i])]
        assert took_over, "no replica took the follower over"

        rows = await outbox_rows(database)
        assert len(rows) == TRANSFERS
        backlog = len(rows) - len({r.event_id for r in receiver.received if r.status == 200})
        ids = {r["event_id"] for r in rows}
        await receiver.wait_until(
            lambda: ids <= {r.event_id for r in receiver.received if r.status == 200},
            timeout=60,
        )
        a_blocks = [b for b, _ in expected[A.wallet_id]]
        await wait_for(
            lambda: any(m.block_number >= a_blocks[-1] for m in streamed),
            "the stream's last change",
        )
        received = list(receiver.received)

        # --- a key revoked (by another process) stops working on every replica ----------------
        code, out, _ = await run_balances(
            "keys", "create", "--tenant", "default", "--config", str(config.path), cwd=tmp_path
        )
        assert code == 0
        second_key = out.strip()
        metadata = (("x-api-key", second_key),)
        request = pb.GetWalletBalanceRequest(wallet_id=B.wallet_id)
        plain = [
            await stack.enter_async_context(aio.insecure_channel(f"127.0.0.1:{replicas[i].port}"))
            for i in others
        ]
        live = [balances_pb2_grpc.BalancesServiceStub(c) for c in plain]
        for stub in live:  # the key works, and is now in each replica's key cache
            await stub.GetWalletBalance(request, metadata=metadata)
        code, _, _ = await run_balances(
            "keys", "revoke", key_id_of(second_key) or "", "--config", str(config.path),
            cwd=tmp_path,
        )  # fmt: skip
        assert code == 0
        revocation = await refused_everywhere(live, request, metadata, StatusCode.UNAUTHENTICATED)
        # --- a wallet deleted on one replica is gone on every replica ---------------------------
        wallets: Any = wallets_pb2_grpc.WalletsServiceStub(channels[others[0]])
        await wallets.DeleteWallet(
            wpb_wallets.DeleteWalletRequest(customer_id=B.customer_id, wallet_id=B.wallet_id)
        )
        own_key = (("x-api-key", config.api_key),)
        deletion = await refused_everywhere(live, request, own_key, StatusCode.NOT_FOUND)

    # Every send is signed with the configured secret and carries the stored body.
    stored = {r["event_id"]: r["payload"] for r in rows}
    bodies: dict[str, set[bytes]] = defaultdict(set)
    ids_of: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in received:
        Webhook(secret).verify(r.text, r.headers)
        bodies[r.event_id].add(r.body)
        data = json.loads(r.body)["data"]
        ids_of[data["wallet_id"], data["currency"], data["block_hash"]].add(r.event_id)
    # No id carries two payloads; no change under two ids.
    assert all(b == {stored[i].encode()} for i, b in bodies.items())
    assert all(len(v) == 1 for v in ids_of.values()), ids_of
    # Every change, exactly the transfers: per wallet, block order, unbroken previous -> new.
    for wallet_id, changes in expected.items():
        events = [json.loads(r["payload"])["data"] for r in rows if r["wallet_id"] == wallet_id]
        assert [(e["block_number"], e["balance"]) for e in events] == [
            (block, shown(raw)) for block, raw in changes
        ]
        assert all(e["currency"] == "USDC" for e in events)
        for before, after in itertools.pairwise(events):
            assert after["previous_balance"] == before["balance"]
        # Delivered in outbox order (a retry repeats only the event in hand).
        sent = collapsed(
            [
                r.event_id
                for r in received
                if r.status == 200 and json.loads(r.body)["data"]["wallet_id"] == wallet_id
            ]
        )
        assert sent == [r["event_id"] for r in rows if r["wallet_id"] == wallet_id]
    # The stream on a non-leading replica saw every change of A, in order.
    changes_seen = [
        (m.block_number, {b.currency: b.amount for b in m.balances}["USDC"])
        for m in streamed[1:]
        if m.block_hash
    ]
    assert changes_seen == [(block, shown(raw)) for block, raw in expected[A.wallet_id]]
    repeats = len(received) - len(ids)
    print(
        f"\n[3 replicas] burst of {BURST} cold calls: {burst_calls} eth_call;"
        f" {TRANSFERS} transfers, leader {leader} killed after {KILL_AT}"
        f" (the next transfer's event stored {takeover:.2f}s after the kill);"
        f" {backlog} events not yet delivered after the last transfer;"
        f" {len(received)} sends for {len(ids)} events ({repeats} repeats, same ids);"
        f" stream on replica {others[0]}: {len(changes_seen)} changes;"
        f" a key revoked by the CLI refused by both live replicas after {revocation:.2f}s,"
        f" a wallet deleted on one replica gone on both after {deletion:.2f}s"
    )
