"""A balance that moves while the server is down is reported once after the restart.

The follower saves its last read in the directory database; the restarted
server compares the first new block with it and emits the net change of the
downtime as one signed webhook per changed currency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from balances.v1 import webhooks_pb2 as wpb
from balances.v1 import webhooks_pb2_grpc
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mine, transfer
from service.run import ServingPorts, serve
from service.settings import Settings
from tests.support.monitoring import (
    POLL,
    RECEIVER,
    SENDER,
    monitored_world,
    verified,
    webhook_settings,
)
from tests.support.stack import keyed_channel, write_stack_config
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[ServingPorts]:
    """``serve()`` in this process; stopped as on SIGTERM at exit."""
    ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, on_ready=ready.set_result, stop=stop))
    try:
        await asyncio.wait({ready, server}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


def ids(hits: list[Any]) -> set[str]:
    return {hit.event_id for hit in hits}


def usdc_moves(secret: str, hits: list[Any]) -> dict[str, tuple[str, str]]:
    moves = {}
    for hit in hits:
        data = verified(secret, hit)["data"]
        if data["currency"] == "USDC":
            moves[data["wallet_id"]] = (data["previous_balance"], data["balance"])
    return moves


async def test_a_change_while_down_is_one_webhook_with_the_net_change_after_restart(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    world = await monitored_world(start_anvil)
    node = world.networks["polygon"]
    async with WebhookReceiver() as receiver:  # first: its port goes into the config
        config = await write_stack_config(
            world, tmp_path, {"polygon": [node.rpc_url]}, **webhook_settings(receiver)
        )
        settings = config.settings
        async with serving(settings) as ports:
            async with keyed_channel(f"127.0.0.1:{ports.grpc}", config.api_key) as channel:
                hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channel)
                created = await hooks.UpdateWebhookConfig(
                    wpb.UpdateWebhookConfigRequest(url=receiver.url)
                )
            secret = created.secret
            await mine(node.rpc_url)
            await asyncio.sleep(5 * POLL)  # the follower's first read: a baseline
            await transfer(
                node.rpc_url, node.tokens["USDC"], SENDER.address, RECEIVER.address, 10_000
            )
            await receiver.wait_until(lambda: len(ids(receiver.received)) == 3)
        # Delivery is at-least-once: a send cut by the stop may come again, same id.
        first_ids = ids(receiver.received)
        first = usdc_moves(secret, receiver.received)
        assert first == {
            SENDER.wallet_id: ("1.00", "0.99"),
            RECEIVER.wallet_id: ("2.00", "2.01"),
        }

        # The server is down: two transfers and some empty blocks go by unseen.
        usdc = node.tokens["USDC"]
        await transfer(node.rpc_url, usdc, SENDER.address, RECEIVER.address, 20_000)
        await transfer(node.rpc_url, usdc, SENDER.address, RECEIVER.address, 30_000)
        await mine(node.rpc_url, 2)

        async with serving(settings):
            await receiver.wait_until(lambda: len(ids(receiver.received)) == 6)
            await asyncio.sleep(10 * POLL)  # and nothing more comes
        assert len(ids(receiver.received)) == 6
        after_restart = list(
            {r.event_id: r for r in receiver.received if r.event_id not in first_ids}.values()
        )
        assert len(after_restart) == 3
        # One event per changed currency, relative to the last read before the stop.
        assert usdc_moves(secret, after_restart) == {
            SENDER.wallet_id: ("0.99", "0.94"),
            RECEIVER.wallet_id: ("2.01", "2.06"),
        }
        currencies = sorted(
            (verified(secret, hit)["data"]["wallet_id"], verified(secret, hit)["data"]["currency"])
            for hit in after_restart
        )
        assert currencies == sorted(
            [(SENDER.wallet_id, "USDC"), (SENDER.wallet_id, "POL"), (RECEIVER.wallet_id, "USDC")]
        )
