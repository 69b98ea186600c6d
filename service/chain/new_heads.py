"""``eth_subscribe("newHeads")`` over a node's WebSocket: call ``on_head`` on each block.

The chain adapter that wakes a block follower.  Polling stays on as the
fallback, so a dropped socket delays events by at most the poll interval.  The
socket reconnects with backoff.  The WebSocket URL can carry a provider key:
logs name the network only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import aiohttp

from service.background import BackgroundLoop

__all__ = ["NewHeadsSubscription"]

log = logging.getLogger(__name__)

_SUBSCRIBE = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}


class NewHeadsSubscription:
    """One network's subscription; ``start`` runs it in a task, ``aclose`` stops it."""

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
        self._delay = first_retry_seconds
        self._session: aiohttp.ClientSession | None = None
        # Each step is one connection, held until it drops; the step says when to retry.
        self._loop = BackgroundLoop(f"new-heads-{network}", self._connect, max_retry_seconds)
        self.heads_seen = 0

    def start(self) -> None:
        self._loop.start()

    async def aclose(self) -> None:
        await self._loop.aclose()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _connect(self) -> float:
        """Listen until the socket drops; return how long to wait before reconnecting."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            await self._listen(self._session)
            reason = "the node closed the subscription"
        except Exception as exc:  # never die: polling would silently become the only path
            reason = type(exc).__name__
        else:
            self._delay = self._first_retry  # it worked for a while: retry soon
        delay = self._delay
        log.warning(
            "network %s: newHeads subscription lost (%s); polling meanwhile, "
            "reconnecting in %.1fs",
            self.network, reason, delay,
        )  # fmt: skip
        self._delay = min(delay * 2, self._max_retry)
        return delay

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
