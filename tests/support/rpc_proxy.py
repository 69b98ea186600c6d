"""A JSON-RPC proxy in front of a real node that counts what passes through it.

Counting upstream calls is how tests prove the cost model (one ``eth_call`` per
network per cold snapshot, none when warm) without timing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any, Self

import aiohttp
from aiohttp import web


class CountingProxy:
    """Forwards every POST to ``upstream`` and counts JSON-RPC methods (batch items too).

    ``fail_with`` makes it answer every request with that HTTP status instead
    (a misbehaving node); ``delay`` holds each request that many seconds first
    (requests still held when the proxy closes are answered 503 at once).
    ``payloads`` keeps every request body as decoded JSON (a dict, or a list for a
    batch), so tests can check which block each call was pinned to.  Subclasses
    decide the answer in ``_respond`` (``tests.support.fault_proxy.FaultProxy``).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.payloads: list[Any] = []
        self.fail_with: int | None = None
        self.delay = 0.0
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = self._runner.addresses[0][1]
        # The path stands for a provider key: it must never appear in errors or logs.
        self.url = f"http://127.0.0.1:{self.port}/v3/SECRET-PROVIDER-KEY"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        self.counts.clear()
        self.payloads.clear()

    def calls(self, method: str) -> list[list[Any]]:
        """The params of every request item for ``method``, in arrival order."""
        items = [i for p in self.payloads for i in (p if isinstance(p, list) else [p])]
        return [i.get("params", []) for i in items if i.get("method") == method]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload: Any = json.loads(body)
        self.payloads.append(payload)
        for item in payload if isinstance(payload, list) else [payload]:
            self.counts[item.get("method", "?")] += 1
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay)
            if self._closing.is_set():
                return web.Response(status=503, text="proxy closing")
        return await self._respond(request, body, payload)

    async def _respond(self, request: web.Request, body: bytes, payload: Any) -> web.StreamResponse:
        """The answer to one request (after counting and ``delay``)."""
        if self.fail_with is not None:
            return web.Response(status=self.fail_with, text="node unavailable")
        status, answer = await self._upstream(body)
        if status == 502:
            return web.Response(status=502, text="upstream unavailable")
        return web.Response(status=status, body=answer, content_type="application/json")

    async def _upstream(self, body: bytes) -> tuple[int, bytes]:
        """The node's HTTP status and body for ``body``; 502 when it cannot be reached."""
        assert self._session is not None
        try:
            async with self._session.post(
                self.upstream, data=body, headers={"Content-Type": "application/json"}
            ) as upstream:
                return upstream.status, await upstream.read()
        except aiohttp.ClientError:  # the node is down: answer as a gateway would
            return 502, b""
