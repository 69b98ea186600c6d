"""A real HTTP webhook receiver for tests: an aiohttp server on 127.0.0.1.

It records every request it gets (headers, exact body, when) and answers with
``status`` (or ``respond(received) -> status``), after ``delay`` seconds.  It
can stop listening and listen again on the same port (the "receiver down" case).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

HOOK_PATH = "/hooks/tok_path_token_never_logged"


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it."""

    event_id: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    status: int  # what the receiver answered

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class WebhookReceiver:
    status: int = 200
    delay: float = 0.0
    respond: Callable[[Received], int] | None = None
    received: list[Received] = field(default_factory=list)
    redirect_target_hits: int = 0
    arrived: int = 0  # requests that reached the handler, answered yet or not
    port: int = 0
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self._hook)
        app.router.add_route("*", "/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await self.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def listen(self) -> None:
        """Accept connections (again, on the same port)."""
        assert self._runner is not None and self._site is None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop_listening(self) -> None:
        """Refuse connections until ``listen``: senders get 'connection refused'."""
        assert self._site is not None
        await self._site.stop()
        self._site = None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def ids_in_order(self) -> list[str]:
        return [r.event_id for r in self.received]

    def acknowledged(self) -> dict[str, Received]:
        """The first 2xx receipt of each event ID."""
        found: dict[str, Received] = {}
        for r in self.received:
            if 200 <= r.status < 300:
                found.setdefault(r.event_id, r)
        return found

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.arrived += 1
        self._changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        partial = Received(
            request.headers.get("webhook-id", ""), dict(request.headers), body, 0.0, 0
        )
        status = self.respond(partial) if self.respond else self.status
        self.received.append(
            Received(partial.event_id, partial.headers, body, time.monotonic(), status)
        )
        self._changed.set()
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status, text="nope" if status >= 300 else "ok")

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.redirect_target_hits += 1
        self._changed.set()
        return web.Response(status=200, text="redirected")
