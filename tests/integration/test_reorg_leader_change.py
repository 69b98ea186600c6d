"""Notifications that converge across a change of leader (issue 15, on issue 12's replicas).

Two real ``balances serve`` replicas on one PostgreSQL and one Redis, ``confirmations
= 0``, a webhook receiver and a watch stream on the replica that does not lead.  A
transfer is announced by the leader; the leader is killed with ``kill -9``; the chain
is reorganised (``anvil_reorg``) to drop the transfer.  The survivor never read the
dropped block itself: only the follower state the dead leader saved in PostgreSQL
tells it what was announced.  It must take the lease over, recognise that an
announced block was replaced, and announce the corrections (``reorged: true``, new
ids).  The receiver and the stream subscriber, applying events in order, end at the
balance a raw ``eth_call`` reads; no event id carries two payloads.

The reorg comes at three moments.  Before the survivor can take over: the leader is
frozen (SIGSTOP keeps its PostgreSQL lock's connection open) during the reorg, then
killed, since a killed leader's lock is released at once.  At the moment the survivor
logs that it leads (racing its restore and first read).  After it resumed from the
saved state (then the announcements it checks are the ones it loaded).
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc, webhooks_pb2_grpc
from balances.v1 import webhooks_pb2 as wpb
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mine, transfer
from service.devchain.rpc import rpc_call
from tests.support.monitoring import RECEIVER, SENDER, data_of, monitored_world, webhook_settings
from tests.support.reorgs import apply_events, chain_says, converged, stream_applies, stream_until
from tests.support.replicas import leads, one_leader, wait_for
from tests.support.serving import Served, kill_9, start_serving
from tests.support.stack import keyed_channel, write_stack_config
from tests.support.watching import Watch
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEASE = 2.0  # [cluster] lease_seconds (a killed leader's lock is released at once)
RESUMED = "network polygon: resuming from block"  # the follower loaded the saved state
REORG_SEEN = "network polygon: reorg"  # the follower's warnings of a replaced block


@pytest.mark.parametrize("reorg_when", ["before_takeover", "at_takeover", "after_takeover"])
async def test_a_new_leader_corrects_what_the_killed_leader_announced(
    reorg_when: str,
    start_anvil: AnvilFactory,
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
) -> None:
    world = await monitored_world(start_anvil)
    node = world.networks["polygon"]
    url, usdc = node.rpc_url, node.tokens["USDC"]
    replicas: list[Served] = []
    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(WebhookReceiver())
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [url]},
            network_changes={"polygon": {"confirmations": 0}},
            directory_url=postgres_url,
            cache_redis_url=redis_url,
            cluster_lease_seconds=LEASE,
            **webhook_settings(receiver),
        )

        async def kill_leftovers() -> None:
            for served in replicas:
                if served.process.returncode is None:
                    await kill_9(served)

        stack.push_async_callback(kill_leftovers)  # before the receiver closes
        for _ in range(2):
            replicas.append(await start_serving(config.path))
        leader = replicas[await one_leader(replicas)]
        survivor = next(r for r in replicas if r is not leader)
        channel = await stack.enter_async_context(
            keyed_channel(f"127.0.0.1:{survivor.port}", config.api_key)
        )
        hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        created = await hooks.UpdateWebhookConfig(
            wpb.UpdateWebhookConfigRequest(url=receiver.url, events=["balance.updated"]),
            timeout=10,
        )
        secret = created.secret
        stub = balances_pb2_grpc.BalancesServiceStub(channel)
        call = stub.WatchWalletBalance(pb.WatchWalletBalanceRequest(wallet_id=RECEIVER.wallet_id))
        stack.callback(call.cancel)
        watch = Watch.start(call)
        first = await watch.next(timeout=10)
        assert {b.currency: b.amount for b in first.balances}["USDC"] == "2.00"
        await mine(url)
        await asyncio.sleep(1.0)  # the leader's follower reads the watched wallets: a baseline

        # --- announced by the leader ------------------------------------------------------
        await transfer(url, usdc, SENDER.address, RECEIVER.address, 10_000)
        seen: list[Any] = []
        await stream_until(watch, "2.01", seen)
        await receiver.wait_until(lambda: len(apply_events(secret, receiver).balances) == 3)
        announced_ids = {r.event_id for r in receiver.received}
        assert apply_events(secret, receiver).balances[(RECEIVER.wallet_id, "USDC")] == "2.01"
        assert not leads(survivor)

        # --- the leader killed; the transfer's block replaced by an empty one -------------
        if reorg_when == "before_takeover":
            # Frozen, the leader holds its lease (the lock's connection stays open) but
            # reads nothing: the reorg happens before anyone can take over, and the dead
            # leader never sees it.
            os.killpg(leader.pgid, signal.SIGSTOP)
            await rpc_call(url, "anvil_reorg", [1, []])
            assert not leads(survivor)
        await kill_9(leader)  # SIGKILL ends a stopped process too
        if reorg_when == "at_takeover":
            await wait_for(lambda: leads(survivor), "the survivor to take the lease over")
        elif reorg_when == "after_takeover":
            await wait_for(
                lambda: any(RESUMED in line for line in survivor.lines),
                "the new leader to resume from the saved follower state",
            )
            await asyncio.sleep(0.5)  # a few polls at the same (announced) head
        if reorg_when != "before_takeover":
            await rpc_call(url, "anvil_reorg", [1, []])
        want = await chain_says(url, usdc, RECEIVER.wallet_id, "USDC")
        assert want == "2.00"

        # --- corrected by the new leader ------------------------------------------------------
        applied = await converged(url, usdc, secret, receiver)  # raw eth_call/eth_getBalance
        await stream_until(watch, want, seen, timeout=20)
        assert await watch.none_within(0.3)  # the stream says nothing more
        assert leads(survivor)
        assert any(REORG_SEEN in line for line in survivor.lines)

    corrected = {(d["wallet_id"], d["currency"]): d for d in applied.corrections}
    # Every announced pair corrected, once, from the announced value.
    assert set(corrected) == {
        (RECEIVER.wallet_id, "USDC"),
        (SENDER.wallet_id, "USDC"),
        (SENDER.wallet_id, "POL"),
    }
    fix = corrected[(RECEIVER.wallet_id, "USDC")]
    assert (fix["previous_balance"], fix["balance"]) == ("2.01", "2.00")
    assert applied.balances[(RECEIVER.wallet_id, "USDC")] == "2.00"
    assert applied.balances[(SENDER.wallet_id, "USDC")] == "1.00"
    # The corrections came under new ids; the announcements' ids kept their payloads.
    correction_ids = {r.event_id for r in receiver.received if data_of(r).get("reorged")}
    assert len(correction_ids) == 3 and not correction_ids & announced_ids
    # The stream: the announcement, then its correction, ending at the chain's balance.
    assert [m.reorged for m in seen] == [False, True]
    assert stream_applies(seen, "2.00") == "2.00"
