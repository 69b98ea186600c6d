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


@dataclass
class RawReply:
    """An HTTP/1.1 answer read off the socket: what aiohttp's client would not show (trailers)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def raw_request(
    base: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> RawReply:
    """One HTTP/1.1 request on a fresh connection (closed after), parsed by hand."""
    import asyncio

    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    reply = RawReply(status, parsed, b"", [])
    if (reply.header("Transfer-Encoding") or "").lower() != "chunked":
        reply.body = rest
        return reply
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        reply.body += rest[:size]
        rest = rest[size + 2 :]
    section, _, _ = rest.partition(b"\r\n\r\n")
    for line in section.decode("latin-1").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            reply.trailers.append((name.strip(), value.strip()))
    return reply
