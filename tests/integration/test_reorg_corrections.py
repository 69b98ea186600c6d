"""Notifications that converge through reorgs, on real anvil (``anvil_reorg``).

With ``confirmations = 0`` a transfer is announced (signed webhooks to a real
receiver, and a watch stream), then ``anvil_reorg`` replaces its block: with an
empty one, or with a different transfer.  A webhook receiver and a stream subscriber
that apply what they get in order must both end at the balances the chain holds
(read by raw ``eth_call`` / ``eth_getBalance``), the corrections say ``reorged``,
and no event ID ever carries two payloads.  Also across a ``kill -9`` of a real
``balances serve``: announced, killed, reorganised, restarted: corrected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from balances.v1 import webhooks_pb2 as wpb
from balances.v1 import webhooks_pb2_grpc
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mine, transfer
from service.devchain.rpc import rpc_call
from service.devchain.world import DemoWorld
from service.domain import AnnouncedBlock, BlockRef, FollowerState
from tests.support.monitoring import RECEIVER, SENDER, monitored_world, webhook_settings
from tests.support.reorgs import (
    Applied,
    apply_events,
    chain_says,
    converged,
    stream_applies,
    stream_until,
)
from tests.support.serving import kill_9, start_serving
from tests.support.stack import Stack, keyed_channel, running_stack, write_stack_config
from tests.support.store_backends import BACKENDS, StoreBackend
from tests.support.watching import Watch, processed, watch_wallet
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def calldata_transfer(to: str, amount: int) -> str:
    return "0xa9059cbb" + to[2:].lower().rjust(64, "0") + f"{amount:064x}"


@asynccontextmanager
async def monitored(
    start_anvil: AnvilFactory, tmp_path: Path
) -> AsyncIterator[tuple[Stack, WebhookReceiver, str]]:
    """A running stack at ``confirmations = 0`` over a fresh chain, tenant "default"'s
    webhooks going to a real receiver; (stack, receiver, secret)."""
    world = await monitored_world(start_anvil)
    async with (
        WebhookReceiver() as receiver,
        running_stack(
            world,
            tmp_path,
            network_changes={"polygon": {"confirmations": 0}},
            **webhook_settings(receiver),
        ) as stack,
    ):
        await stack.service.start()
        hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(stack.keyed)
        created = await hooks.UpdateWebhookConfig(
            wpb.UpdateWebhookConfigRequest(url=receiver.url, events=["balance.updated"])
        )
        yield stack, receiver, created.secret


async def settle(stack: Stack, url: str) -> None:
    """Two processed blocks: the webhooks' and the stream's wallets are followed."""
    for _ in range(2):
        await mine(url)
        head = int(await rpc_call(url, "eth_blockNumber"), 16)
        await processed(stack.service.followers["polygon"], head)


async def run_reorg(
    start_anvil: AnvilFactory, tmp_path: Path, replacement: int | None
) -> tuple[Applied, list[Any], str]:
    """Announce a 0.01 USDC transfer, then replace its block (with a transfer of
    ``replacement``, or an empty block); (webhooks applied, stream messages, canonical)."""
    async with monitored(start_anvil, tmp_path) as (stack, receiver, secret):
        node = stack.world.networks["polygon"]
        url, usdc = node.rpc_url, node.tokens["USDC"]
        watch = Watch.start(watch_wallet(stack, RECEIVER.wallet_id))
        first = await watch.next()
        assert {b.currency: b.amount for b in first.balances}["USDC"] == "2.00"
        await settle(stack, url)
        await transfer(url, usdc, SENDER.address, RECEIVER.address, 10_000)
        seen: list[Any] = []
        await stream_until(watch, "2.01", seen)
        await receiver.wait_until(lambda: len(apply_events(secret, receiver).balances) == 3)
        announced = apply_events(secret, receiver).balances
        assert announced[(RECEIVER.wallet_id, "USDC")] == "2.01"

        txs: list[Any] = []
        if replacement is not None:
            data = calldata_transfer(RECEIVER.address, replacement)
            txs = [[{"from": SENDER.address, "to": usdc, "data": data}, 0]]
            await rpc_call(url, "anvil_impersonateAccount", [SENDER.address])
        await rpc_call(url, "anvil_reorg", [1, txs])
        want = await chain_says(url, usdc, RECEIVER.wallet_id, "USDC")
        await stream_until(watch, want, seen)
        applied = await converged(url, usdc, secret, receiver)
        assert await watch.none_within(0.3)  # the stream says nothing more
        watch.call.cancel()
        return applied, seen, want


async def test_a_dropped_transfer_is_corrected_for_webhooks_and_streams(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    applied, seen, canonical_usdc = await run_reorg(start_anvil, tmp_path, None)
    assert canonical_usdc == "2.00"
    assert applied.balances[(RECEIVER.wallet_id, "USDC")] == "2.00"
    assert applied.balances[(SENDER.wallet_id, "USDC")] == "1.00"
    corrected = {(d["wallet_id"], d["currency"]): d for d in applied.corrections}
    # Each announced pair is corrected once, from the announced value.
    assert set(corrected) == {
        (RECEIVER.wallet_id, "USDC"),
        (SENDER.wallet_id, "USDC"),
        (SENDER.wallet_id, "POL"),
    }
    receiver_fix = corrected[(RECEIVER.wallet_id, "USDC")]
    assert (receiver_fix["previous_balance"], receiver_fix["balance"]) == ("2.01", "2.00")
    # The stream: the announcement, then its correction (reorged), ending at the chain's.
    assert [m.reorged for m in seen] == [False, True]
    assert stream_applies(seen, "2.00") == "2.00"


async def test_a_transfer_replaced_by_another_ends_at_the_new_one(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    applied, seen, canonical_usdc = await run_reorg(start_anvil, tmp_path, 25_000)
    assert canonical_usdc == "2.025"  # neither what was announced (2.01) nor before (2.00)
    assert applied.balances[(RECEIVER.wallet_id, "USDC")] == "2.025"
    fix = next(
        d
        for d in applied.corrections
        if (d["wallet_id"], d["currency"]) == (RECEIVER.wallet_id, "USDC")
    )
    assert (fix["previous_balance"], fix["balance"]) == ("2.01", "2.025")
    assert seen[-1].reorged and stream_applies(seen, "2.00") == "2.025"


async def test_a_reorg_while_the_server_is_killed_is_corrected_after_the_restart(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    world: DemoWorld = await monitored_world(start_anvil)
    node = world.networks["polygon"]
    url, usdc = node.rpc_url, node.tokens["USDC"]
    async with WebhookReceiver() as receiver:
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [url]},
            network_changes={"polygon": {"confirmations": 0}},
            **webhook_settings(receiver),
        )
        served = await start_serving(config.path)
        try:
            async with keyed_channel(f"127.0.0.1:{served.port}", config.api_key) as channel:
                hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channel)
                created = await hooks.UpdateWebhookConfig(
                    wpb.UpdateWebhookConfigRequest(url=receiver.url)
                )
            secret = created.secret
            await mine(url)
            await asyncio.sleep(1.0)  # the follower's first read: a baseline
            await transfer(url, usdc, SENDER.address, RECEIVER.address, 10_000)
            await receiver.wait_until(lambda: len(apply_events(secret, receiver).balances) == 3)
        finally:
            await kill_9(served)
        assert apply_events(secret, receiver).balances[(RECEIVER.wallet_id, "USDC")] == "2.01"

        await rpc_call(url, "anvil_reorg", [1, []])  # nobody follows the chain now
        served = await start_serving(config.path)
        try:
            applied = await converged(url, usdc, secret, receiver)
        finally:
            await kill_9(served)
        assert applied.balances[(RECEIVER.wallet_id, "USDC")] == "2.00"
        fix = next(
            d
            for d in applied.corrections
            if (d["wallet_id"], d["currency"]) == (RECEIVER.wallet_id, "USDC")
        )
        assert (fix["previous_balance"], fix["balance"]) == ("2.01", "2.00")
        assert json.dumps(fix).count("reorged") == 1


@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_the_announcements_round_trip_on_both_backends(
    backend_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """What a restarted follower or a new leader needs to recognise a replaced block."""
    url = request.getfixturevalue("postgres_url") if backend_name == "postgresql" else None
    backend = StoreBackend(backend_name, tmp_path / "stores.sqlite3", url)
    block = BlockRef("polygon", 9, "0x" + "cd" * 32, 1_700_000_009)
    announced = (
        AnnouncedBlock(7, "0x" + "aa" * 32, frozenset({(SENDER.address, "USDC")})),
        AnnouncedBlock(
            9, "0x" + "cd" * 32, frozenset({(SENDER.address, "POL"), (RECEIVER.address, "USDC")})
        ),
    )
    state = FollowerState(block, {SENDER.address: {"USDC": 2**256 - 1}}, announced, reorgs=3)
    async with await backend.open() as stores:
        await stores.follower_state.save_follower_state(state)
    async with await backend.open() as stores:  # another process (a new leader)
        assert await stores.follower_state.load_follower_state("polygon") == state
        older = FollowerState(block, {})  # nothing announced: empty, not the last value kept
        await stores.follower_state.save_follower_state(older)
        assert await stores.follower_state.load_follower_state("polygon") == older
