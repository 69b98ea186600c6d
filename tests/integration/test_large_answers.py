"""A large JSON-RPC answer arriving in pieces is read whole (a 5,000-holder multicall is MBs)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from service.chain.providers import ProviderPolicy, ProviderPool
from service.errors import ChainUnavailable
from tests.support.rest import serve_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

RESULT = "0x" + "ab" * 600_000  # 1.2 MB of hex


def node(result: str, *, chunk: int = 50_000, pause: float = 0.002) -> web.Application:
    """A JSON-RPC node that streams each answer in small pieces, with pauses between them."""

    async def answer(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        if payload["method"] == "eth_chainId":
            body = json.dumps({"jsonrpc": "2.0", "id": payload["id"], "result": "0x7a69"})
            return web.Response(text=body, content_type="application/json")
        body = json.dumps({"jsonrpc": "2.0", "id": payload["id"], "result": result}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), chunk):
            await response.write(body[start : start + chunk])
            await asyncio.sleep(pause)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/", answer)
    return app


async def test_an_answer_streamed_in_pieces_is_read_whole() -> None:
    runner, base = await serve_gateway(node(RESULT))
    pool = ProviderPool("polygon", [base + "/"], ProviderPolicy(), chain_id=31337)
    try:
        assert await pool.request("eth_call", [{}, "latest"], timeout=10) == RESULT
    finally:
        await pool.aclose()
        await runner.cleanup()


async def test_an_answer_beyond_the_size_cap_is_a_provider_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.chain.providers._MAX_BODY_BYTES", 100_000)
    runner, base = await serve_gateway(node(RESULT))
    pool = ProviderPool("polygon", [base + "/"], ProviderPolicy(), chain_id=31337)
    try:
        with pytest.raises(ChainUnavailable, match="answer too large"):
            await pool.request("eth_call", [{}, "latest"], timeout=10)
    finally:
        await pool.aclose()
        await runner.cleanup()
