"""A REST client of a served gateway app, and serving one on a free port."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class Gateway:
    """A gateway at ``base``; ``default_headers`` go with every request unless it overrides them."""

    base: str
    http: aiohttp.ClientSession
    default_headers: dict[str, str] = field(default_factory=dict)

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """(status, JSON body or None, headers)."""
        kwargs["headers"] = {**self.default_headers, **kwargs.get("headers", {})}
        async with self.http.request(method, self.base + path, **kwargs) as response:
            text = await response.text()
            body = await response.json(content_type=None) if text else None
            return response.status, body, response.headers


async def serve_gateway(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` served on 127.0.0.1 at a free port: (its runner, to clean up; its base URL)."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"
