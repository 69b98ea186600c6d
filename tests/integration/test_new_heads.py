"""newHeads over a real anvil WebSocket wakes the follower; polling is only the fallback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from service.chain.new_heads import NewHeadsSubscription
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mine
from service.devchain.world import DemoWorld
from service.settings import WatchSettings
from tests.support.stack import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition another component changes (it offers no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_each_new_block_wakes_once_and_the_socket_reconnects(
    start_anvil: AnvilFactory,
) -> None:
    async with start_anvil(31999) as node:
        woken: list[int] = []
        subscription = NewHeadsSubscription(
            "testnet", f"ws://127.0.0.1:{node.port}", lambda: woken.append(1),
            first_retry_seconds=0.1,
        )  # fmt: skip
        subscription.start()
        try:
            await asyncio.sleep(0.3)  # subscribed
            await mine(node.url, 1)
            await mine(node.url, 1)
            await mine(node.url, 1)
            await wait_until(lambda: len(woken) >= 3)
            await asyncio.sleep(0.2)
            assert len(woken) == 3  # one wake per block, nothing else

            await node.stop()  # the socket drops; the subscription must come back
            await node.start()
            before = len(woken)
            deadline = asyncio.get_running_loop().time() + 10
            while len(woken) == before and asyncio.get_running_loop().time() < deadline:
                await mine(node.url, 1)
                await asyncio.sleep(0.3)
            assert len(woken) > before
        finally:
            await subscription.aclose()


async def test_configured_ws_url_is_subscribed_and_wakes_the_follower(
    world: DemoWorld, tmp_path: Path
) -> None:
    polygon = world.networks["polygon"]
    ws_url = polygon.rpc_url.replace("http://", "ws://")
    async with running_stack(
        world,
        tmp_path,
        network_changes={"polygon": {"ws_url": ws_url}},
        watch=WatchSettings(poll_interval_seconds=3600),
    ) as stack:
        [subscription] = stack.service.new_heads
        assert subscription.network == "polygon"
        follower = stack.service.followers["polygon"]
        woken = 0
        original_wake = follower.wake

        def counting_wake() -> None:
            nonlocal woken
            woken += 1
            original_wake()

        subscription._on_head = counting_wake  # observe the wiring without changing it
        await stack.service.start()
        await asyncio.sleep(0.3)
        await mine(polygon.rpc_url, 1)  # mining changes no balance of the shared world
        await wait_until(lambda: woken >= 1)
        assert subscription.heads_seen >= 1
