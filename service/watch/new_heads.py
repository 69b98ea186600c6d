"""``eth_subscribe("newHeads")`` over a node's WebSocket: wake the follower on each block.

Polling stays on as the fallback, so a dropped socket delays events by at most
the poll interval.  The socket reconnects with backoff.  The WebSocket URL can
carry a provider key: logs name the network only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import aiohttp

__all__ = ["NewHeadsSubscription"]

log = logging.getLogger(__name__)

_SUBSCRIBE = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}


class NewHeadsSubscription:
    def __init__(
        self,
        network: str,
        ws_url: str,
        on_head: Callable[[], None],
        *,
        first_retry_seconds: float = 0.5,
        max_retry_seconds: float = 30.0,
    ) -> None:
        self.network = network
        self._url = ws_url
        self._on_head = on_head
        self._first_retry = first_retry_seconds
        self._max_retry = max_retry_seconds
        self._task: asyncio.Task[None] | None = None
        self.heads_seen = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"new-heads-{self.network}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self._first_retry
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self._listen(session)
                    reason = "the node closed the subscription"
                except Exception as exc:  # never die: polling would silently become the only path
                    reason = type(exc).__name__
                else:
                    delay = self._first_retry  # it worked for a while: retry soon
                log.warning(
                    "network %s: newHeads subscription lost (%s); polling meanwhile, "
                    "reconnecting in %.1fs",
                    self.network, reason, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry)

    async def _listen(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self._url, heartbeat=30) as socket:
            await socket.send_json(_SUBSCRIBE)
            async for message in socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                if data.get("id") == 1 and "error" in data:
                    raise ValueError("eth_subscribe refused")
                if data.get("method") == "eth_subscription":
                    self.heads_seen += 1
                    self._on_head()
