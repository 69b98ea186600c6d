"""A JSON-RPC proxy that records what the counted server asks its node.

Only the counted server reads through it (the timed server talks to anvil
directly), so its hop costs no measured figure.  What it records is used
twice: to count upstream calls (subscribing 1,000 watch streams), and as the
exact payloads the raw references replay, so "the same payload" is the
service's own bytes, whatever its encoder and batching are.
"""

from __future__ import annotations

import json
from typing import Any, Self

import aiohttp
from aiohttp import web

__all__ = ["RecordingProxy"]


class RecordingProxy:
    """Forwards every POST to ``upstream`` and keeps each JSON-RPC item it carried."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.items: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def mark(self) -> int:
        """A position in the record, for ``since``."""
        return len(self.items)

    def since(self, mark: int, method: str | None = None) -> list[dict[str, Any]]:
        """Items recorded after ``mark`` (of ``method`` only, when given)."""
        return [i for i in self.items[mark:] if method is None or i.get("method") == method]

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload: Any = json.loads(body)
        self.items.extend(payload if isinstance(payload, list) else [payload])
        assert self._session is not None
        async with self._session.post(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        ) as upstream:
            answer = await upstream.read()
            return web.Response(
                status=upstream.status, body=answer, content_type="application/json"
            )
