"""Minimal JSON-RPC client for the dev chain: one request, one answer."""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp

__all__ = ["DevChainRpcError", "rpc_call"]

_ids = itertools.count(1)
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class DevChainRpcError(RuntimeError):
    """The node answered a JSON-RPC request with an error object."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.code: int | None = error.get("code")
        self.message: str = str(error.get("message", ""))
        self.data: Any = error.get("data")
        super().__init__(f"{method} failed: {self.message} (code {self.code})")


async def rpc_call(
    url: str,
    method: str,
    params: list[Any] | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
) -> Any:
    """Send one JSON-RPC request and return its ``result``; raise DevChainRpcError on error."""
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params or []}
    if session is None:
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as own:
            return await _post(own, url, method, body)
    return await _post(session, url, method, body)


async def _post(session: aiohttp.ClientSession, url: str, method: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        answer: dict[str, Any] = await response.json()
    if "error" in answer:
        raise DevChainRpcError(method, answer["error"])
    return answer.get("result")
