"""``kill -9`` of a real ``balances serve`` with webhook events pending, then a restart.

One fresh anvil chain (``monitored_world``), one real ``balances serve --config``
process in its own process group (as in ``test_shutdown``), reading the chain
through a counting proxy, and a real receiver that is down (answers 503).
Three transfers put nine ``balance.updated`` events in the SQLite outbox; the
receiver refuses them and, at the moment of the kill, holds one send in flight
(the receiver then answers it 200: processed, but the sender never learns it).
The whole process group is killed with SIGKILL, the receiver comes up, and
``balances serve`` is started again on the same config and database.

Asserted from what the receiver got (signatures checked with the independent
``standardwebhooks`` package against the secret from ``UpdateWebhookConfig``)
and from the outbox, read read-only: every event pending at the kill is
delivered after the restart (at least once, nothing lost), every send of one
event carries one ``webhook-id`` and the byte-identical stored body, no two IDs
carry the same (wallet, currency, block hash), and each wallet's events arrive
in outbox order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from balances.v1 import webhooks_pb2 as wpb
from balances.v1 import webhooks_pb2_grpc
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mine, transfer
from service.devchain.rpc import rpc_call
from service.settings import WatchSettings, WebhookSettings
from tests.support.monitoring import RECEIVER, SENDER, collapsed, monitored_world
from tests.support.rpc_proxy import CountingProxy
from tests.support.serving import Served, kill_9, start_serving
from tests.support.stack import keyed_channel, write_stack_config
from tests.support.webhook_receiver import Received, WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLL = 0.1  # [watch] poll_interval_seconds
# Short retries, but many: an event refused for the whole time before the kill is
# still pending (9.5 s of tries), and after the restart no retry is more than 0.5 s off.
RETRIES = (0.2, 0.3, *(0.5,) * 18)
WATCH = WatchSettings(poll_interval_seconds=POLL)
TRANSFERS = (10_000, 20_000, 30_000)  # USDC base units (6 decimals): 0.01, 0.02, 0.03
PAIRS = [(SENDER.wallet_id, "USDC"), (SENDER.wallet_id, "POL"), (RECEIVER.wallet_id, "USDC")]
HOLD = 2.0  # seconds the receiver holds the send that is in flight at the kill


def webhooks(receiver: WebhookReceiver) -> WebhookSettings:
    """Short retries; the test's receiver as the development receiver."""
    return WebhookSettings(
        allow_http_hosts=(f"127.0.0.1:{receiver.port}",),
        timeout_seconds=5,
        retry_schedule_seconds=RETRIES,
    )


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_id: str
    wallet_id: str
    currency: str
    block_number: int
    block_hash: str
    payload: str
    status: str
    attempts: int


def read_outbox(db_path: Path) -> list[OutboxRow]:
    """The outbox in ``seq`` order, through a read-only connection (never writes)."""
    connection = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        rows = connection.execute(
            "SELECT seq, event_id, wallet_id, currency, block_number, block_hash, payload,"
            " status, attempts FROM webhook_outbox ORDER BY seq"
        ).fetchall()
    finally:
        connection.close()
    return [OutboxRow(*row) for row in rows]


async def outbox(db_path: Path) -> list[OutboxRow]:
    return await asyncio.to_thread(read_outbox, db_path)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def wait_for_outbox(db_path: Path, count: int, timeout: float = 10) -> list[OutboxRow]:
    deadline = time.monotonic() + timeout
    while len(rows := await outbox(db_path)) < count:
        assert time.monotonic() < deadline, f"the outbox holds {len(rows)} events, not {count}"
        await asyncio.sleep(0.02)
    return rows


def pinned_reads(proxy: CountingProxy) -> set[int]:
    """The blocks the follower's snapshot reads (eth_call) were pinned to."""
    return {
        int(params[1], 16)
        for params in proxy.calls("eth_call")
        if len(params) > 1 and str(params[1]).startswith("0x")  # not start-up checks at "latest"
    }


def data_of(received: Received) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(received.body)["data"]
    return data


async def test_kill_9_with_webhook_events_pending_then_restart_delivers_each_under_its_id(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    world = await monitored_world(start_anvil)
    url = world.networks["polygon"].rpc_url
    usdc = world.networks["polygon"].tokens["USDC"]
    started: list[Served] = []

    async def kill_leftovers() -> None:
        for served in started:
            await kill_9(served)

    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(WebhookReceiver(status=503))  # down
        proxy = await stack.enter_async_context(CountingProxy(url))
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [proxy.url]},
            network_changes={"polygon": {"confirmations": 0}},
            watch=WATCH,
            webhooks=webhooks(receiver),
        )
        db_path = config.settings.directory_path
        stack.push_async_callback(kill_leftovers)  # runs before the proxy and receiver close

        # --- the first run: configure, baseline, three transfers, all refused --------------
        first = await start_serving(config.path)
        started.append(first)
        proxy.reset()  # start-up checks are not snapshot reads
        async with keyed_channel(f"127.0.0.1:{first.port}", config.api_key) as channel:
            hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channel)
            created = await hooks.UpdateWebhookConfig(
                wpb.UpdateWebhookConfigRequest(url=receiver.url, events=["balance.updated"]),
                timeout=10,
            )
        assert created.created and created.secret.startswith("whsec_")
        secret = created.secret
        # The webhook makes both wallets watched: the next snapshot read is their baseline.
        # A second read (of a later block) means the baseline was committed.
        await wait_for(lambda: proxy.counts["eth_call"] >= 1, "the follower's baseline read")
        await mine(url)
        await wait_for(lambda: proxy.counts["eth_call"] >= 2, "the follower's second read")

        blocks: list[int] = []
        for n, amount in enumerate(TRANSFERS, start=1):
            await transfer(url, usdc, SENDER.address, RECEIVER.address, amount)
            blocks.append(int(await rpc_call(url, "eth_blockNumber"), 16))
            await wait_for_outbox(db_path, 3 * n)  # this block's events are stored
        # Both wallets' head events were sent and refused, and retried.
        await receiver.wait_until(lambda: len(receiver.received) >= 4)
        # Hold the next send: it is in flight when the process dies.
        receiver.delay = HOLD
        arrived = receiver.arrived
        await receiver.wait_until(lambda: receiver.arrived > arrived)
        killed_at = time.monotonic()
        await kill_9(first)
        assert first.process.returncode == -signal.SIGKILL

        # --- between the runs: the receiver comes up; the dead server's outbox ------------
        receiver.status, receiver.delay = 200, 0.0
        await receiver.wait_until(lambda: len(receiver.received) == receiver.arrived)
        before_restart = list(receiver.received)
        at_kill = await outbox(db_path)
        pending = [r for r in at_kill if r.status == "pending"]
        pending_ids = {r.event_id for r in pending}
        assert len(at_kill) == len(pending) == 3 * len(TRANSFERS), [r.status for r in at_kill]
        assert sorted((r.wallet_id, r.currency, r.block_number) for r in pending) == sorted(
            (w, c, b) for b in blocks for w, c in PAIRS
        )
        refused = [r for r in before_restart if r.status == 503]
        in_flight = [r for r in before_restart if r.status == 200]  # answered after the kill
        assert len(refused) + len(in_flight) == len(before_restart)
        assert in_flight, "no send was in flight at the kill"
        assert {r.event_id for r in before_restart} <= pending_ids
        assert max(r.attempts for r in pending) >= 2  # the kill came mid-backoff

        # --- the second run on the same config and database ---------------------------------
        restarted_at = time.monotonic()
        second = await start_serving(config.path)
        started.append(second)
        serving_at = time.monotonic()

        def acknowledged_after_restart() -> set[str]:
            return {r.event_id for r in receiver.received[len(before_restart) :] if r.status == 200}

        await receiver.wait_until(lambda: pending_ids <= acknowledged_after_restart(), timeout=10)
        drained_at = time.monotonic()

        # Nothing more comes: two later blocks are processed by the new follower (the read
        # of the second is sent after the first was fully handled) and add no event.
        for _ in range(2):
            await mine(url)
            head = int(await rpc_call(url, "eth_blockNumber"), 16)
            await wait_for(lambda h=head: h in pinned_reads(proxy), f"a read of block {head}")  # type: ignore[misc]
        await asyncio.sleep(3 * POLL)
        after = await outbox(db_path)
        assert [(r.event_id, r.payload) for r in after] == [
            (r.event_id, r.payload) for r in at_kill
        ]
        assert all(r.status == "delivered" for r in after), [r.status for r in after]
        received = list(receiver.received)
        after_restart = received[len(before_restart) :]
        await kill_9(second)
        started.clear()

    # Every request, before and after the kill, is signed with the configured secret.
    for r in received:
        Webhook(secret).verify(r.text, r.headers)
    stored = {r.event_id: r for r in at_kill}
    # One webhook-id per event: every send of it carries the stored body, byte for byte ...
    bodies: dict[str, set[bytes]] = defaultdict(set)
    ids_of: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in received:
        bodies[r.event_id].add(r.body)
        data = data_of(r)
        ids_of[data["wallet_id"], data["currency"], data["block_hash"]].add(r.event_id)
    assert all(b == {stored[i].payload.encode()} for i, b in bodies.items())
    # ... and no (wallet, currency, block) was sent under two different IDs.
    assert all(len(ids) == 1 for ids in ids_of.values()), ids_of
    # Nothing lost: after the restart exactly the pending events were delivered.
    assert acknowledged_after_restart() == pending_ids
    assert len({r.event_id for r in after_restart}) == len(pending)
    # The send in flight at the kill (answered 200, never recorded) came again, same ID.
    assert {r.event_id for r in in_flight} <= {r.event_id for r in after_restart}
    # Per wallet, in outbox order (block order; a retry repeats only the event in hand).
    for wallet in {r.wallet_id for r in pending}:
        sent = collapsed([r.event_id for r in after_restart if data_of(r)["wallet_id"] == wallet])
        assert sent == [r.event_id for r in pending if r.wallet_id == wallet]
    # The amounts are the transfers', one block after the other.
    usdc_moves = {
        (d["wallet_id"], d["block_number"]): (d["previous_balance"], d["balance"])
        for d in (json.loads(stored[i].payload)["data"] for i in pending_ids)
        if d["currency"] == "USDC"
    }
    assert usdc_moves == {
        (SENDER.wallet_id, blocks[0]): ("1.00", "0.99"),
        (SENDER.wallet_id, blocks[1]): ("0.99", "0.97"),
        (SENDER.wallet_id, blocks[2]): ("0.97", "0.94"),
        (RECEIVER.wallet_id, blocks[0]): ("2.00", "2.01"),
        (RECEIVER.wallet_id, blocks[1]): ("2.01", "2.03"),
        (RECEIVER.wallet_id, blocks[2]): ("2.03", "2.06"),
    }
    print(
        f"\n[kill -9 of balances serve] {len(pending)} events pending at the kill"
        f" ({len(refused)} requests refused with 503, {len(in_flight)} in flight at the kill;"
        f" max attempts {max(r.attempts for r in pending)});"
        f" after the restart {len(after_restart)} requests for {len(pending_ids)} events"
        f" ({len(after_restart) - len(pending_ids)} repeats; {len(in_flight)} answered 200 twice,"
        f" same ID), all delivered"
        f" {drained_at - serving_at:.2f}s after 'serving'"
        f" ({drained_at - restarted_at:.2f}s after the restart began,"
        f" {drained_at - killed_at:.2f}s after the kill)"
    )
