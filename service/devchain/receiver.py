"""A local webhook receiver for the demo: verifies each signature and prints the event.

Dev tooling only; the tests verify signatures with the independent
``standardwebhooks`` package instead.
"""

from __future__ import annotations

import hmac
import json
import logging

from aiohttp import web

from service.webhooks.signing import signature

__all__ = ["DemoReceiver"]

log = logging.getLogger(__name__)


class DemoReceiver:
    """Listens on 127.0.0.1 (free port) and prints one line per balance.updated event."""

    def __init__(self, secret: str = "") -> None:
        self.secret = secret  # set once the webhook config has been created
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/webhooks", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/webhooks"
        return self.url

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.text()
        event_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "0")
        presented = request.headers.get("webhook-signature", "")
        expected = signature(self.secret, event_id, int(timestamp), body) if self.secret else ""
        valid = any(hmac.compare_digest(expected, s) for s in presented.split())
        self.received += 1
        event = json.loads(body)
        data = event.get("data", {})
        print(
            f"webhook {event_id} {event.get('type')} {data.get('wallet_id')} "
            f"{data.get('currency')} {data.get('previous_balance')} -> {data.get('balance')} "
            f"at block {data.get('block_number')} "
            f"(signature {'valid' if valid else 'INVALID'})",
            flush=True,
        )
        return web.Response(status=204 if valid else 400)
