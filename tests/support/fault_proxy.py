"""A JSON-RPC proxy in front of a real node that fails the way providers really fail.

``FaultProxy`` is a ``CountingProxy`` (it counts every method it is asked) with
one switchable ``Fault`` at a time.  Faults that change answers start from the
node's real answer, so everything not faulted is exactly what the chain says;
``answered`` counts the calls it passed through unharmed (how tests see traffic
return to a recovered provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections import Counter
from typing import Any

from aiohttp import web
from eth_abi.abi import encode

from service.chain.multicall import AGGREGATE3, decode_aggregate3
from tests.support.rpc_proxy import CountingProxy

__all__ = ["STATE_READS", "Fault", "FaultProxy"]

# Methods whose last parameter (first, for eth_getBlockByNumber) is a block.
STATE_READS = ("eth_call", "eth_getBalance", "eth_getCode", "eth_getBlockByNumber")
_LATEST = ("latest", "pending")


class Fault(enum.Enum):
    REFUSED = "refused connection"  # the port is closed; pooled connections are reset
    DROPPED = "dropped connection"  # the socket closes after the request was read
    STALL = "stall"  # held ``stall_seconds``, then answered
    HTTP_429 = "HTTP 429 + Retry-After"
    HTTP_503 = "HTTP 503"
    RATE_LIMITED = "JSON-RPC -32005"  # an error object, HTTP 200
    HEADER_NOT_FOUND = "pruned: header not found"
    MISSING_TRIE_NODE = "pruned: missing trie node"
    GARBAGE = "garbage body"
    TRUNCATED = "truncated body"
    NULL_RESULT = "null eth_call result"
    NON_HEX_RESULT = "non-hex eth_call result"
    SHORT_AGGREGATE = "aggregate3: too few results"
    LAGGING = "lagging head"  # head-``lag_blocks``, a real historic view


# JSON-RPC errors per item: code, message, and the methods that get them.
_ERRORS: dict[Fault, tuple[int, str, tuple[str, ...] | None]] = {
    Fault.RATE_LIMITED: (-32005, "rate limit exceeded: too many requests", None),
    Fault.HEADER_NOT_FOUND: (-32000, "header not found", STATE_READS),
    Fault.MISSING_TRIE_NODE: (
        -32000,
        "missing trie node 8d1e6bd53bb3f0d2c9a3c1d0b5e4f7a6 (path )",
        STATE_READS[:3],
    ),
}


class FaultProxy(CountingProxy):
    """``fault`` (None: healthy) decides every answer; switch it with ``set_fault``."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.fault: Fault | None = None
        self.stall_seconds = 5.0
        self.retry_after = "1"  # the Retry-After header of HTTP 429
        self.lag_blocks = 5
        self.answered: Counter[str] = Counter()  # calls passed through with no fault

    async def set_fault(self, fault: Fault | None) -> None:
        """Switch to ``fault`` (None: healthy again); the port closes only for REFUSED."""
        if (fault is Fault.REFUSED) != (self.fault is Fault.REFUSED):
            await (self._close_port() if fault is Fault.REFUSED else self._open_port())
        self.fault = fault

    async def _close_port(self) -> None:
        assert self._site is not None
        await self._site.stop()
        self._site = None

    async def _open_port(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def _respond(self, request: web.Request, body: bytes, payload: Any) -> web.StreamResponse:
        fault = self.fault
        if fault is None:
            for item in _items(payload):
                self.answered[item.get("method", "?")] += 1
            return await super()._respond(request, body, payload)
        if fault in (Fault.REFUSED, Fault.DROPPED):
            # A dead node resets connections the client still pools; DROPPED hangs up
            # after reading the request.  Either way no answer arrives.
            _hang_up(request)
            return web.Response(status=500)
        if fault is Fault.STALL:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.stall_seconds)
            if self._closing.is_set():
                return web.Response(status=503, text="proxy closing")
            return await super()._respond(request, body, payload)
        if fault is Fault.HTTP_429:
            headers = {"Retry-After": self.retry_after}
            return web.Response(status=429, text="Too Many Requests", headers=headers)
        if fault is Fault.HTTP_503:
            return web.Response(status=503, text="Service Unavailable")
        if fault is Fault.GARBAGE:
            return web.Response(
                status=200, text="<html><h1>Bad gateway</h1>", content_type="text/html"
            )
        if fault is Fault.LAGGING:
            return await self._lagging(payload)
        status, raw = await self._upstream(body)
        if status != 200:
            return web.Response(status=status, body=raw)
        if fault is Fault.TRUNCATED:
            return await _truncated(request, raw)
        answer = json.loads(raw)
        by_id = {a.get("id"): a for a in _items(answer)}
        for item in _items(payload):
            reply = by_id.get(item.get("id"))
            if reply is not None:
                _spoil(fault, item, reply)
        return web.json_response(answer)

    async def _lagging(self, payload: Any) -> web.Response:
        """The chain as it was ``lag_blocks`` ago: ``latest`` is that block, later ones
        do not exist yet (as on a node that is behind)."""
        status, raw = await self._upstream(
            json.dumps({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber"}).encode()
        )
        if status != 200:
            return web.Response(status=status, body=raw)
        head = max(int(json.loads(raw)["result"], 16) - self.lag_blocks, 0)
        local: dict[Any, dict[str, Any]] = {}  # answered here, not upstream
        forward: list[dict[str, Any]] = []
        for item in _items(payload):
            method, params = item.get("method"), list(item.get("params", []))
            reply = {"jsonrpc": "2.0", "id": item.get("id")}
            if method == "eth_blockNumber":
                local[item.get("id")] = {**reply, "result": hex(head)}
                continue
            if method in STATE_READS and params:
                where = 0 if method == "eth_getBlockByNumber" else len(params) - 1
                block = params[where]
                if block in _LATEST:
                    params[where] = hex(head)
                elif isinstance(block, str) and block.startswith("0x") and int(block, 16) > head:
                    if method == "eth_getBlockByNumber":
                        local[item.get("id")] = {**reply, "result": None}
                    else:
                        error = {"code": -32000, "message": "header not found"}
                        local[item.get("id")] = {**reply, "error": error}
                    continue
            forward.append({**item, "params": params})
        answers: dict[Any, dict[str, Any]] = dict(local)
        if forward:
            status, raw = await self._upstream(json.dumps(forward).encode())
            if status != 200:
                return web.Response(status=status, body=raw)
            answers |= {a.get("id"): a for a in json.loads(raw)}
        if isinstance(payload, list):
            return web.json_response([answers[i.get("id")] for i in payload])
        return web.json_response(answers[payload.get("id")])


def _items(payload: Any) -> list[dict[str, Any]]:
    items = payload if isinstance(payload, list) else [payload]
    return [i for i in items if isinstance(i, dict)]


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _truncated(request: web.Request, raw: bytes) -> web.StreamResponse:
    """The first half of the body under a Content-Length for all of it, then a hang-up."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(raw)
    await response.prepare(request)
    await response.write(raw[: len(raw) // 2])
    _hang_up(request)
    return response


def _spoil(fault: Fault, item: dict[str, Any], reply: dict[str, Any]) -> None:
    """Turn the node's real ``reply`` to ``item`` into what ``fault`` answers."""
    method = item.get("method")
    if fault in _ERRORS:
        code, message, methods = _ERRORS[fault]
        if methods is None or method in methods:
            reply.pop("result", None)
            reply["error"] = {"code": code, "message": message}
        return
    if method != "eth_call" or "result" not in reply:
        return
    if fault is Fault.NULL_RESULT:
        reply["result"] = None
    elif fault is Fault.NON_HEX_RESULT:
        reply["result"] = "0xZZ"
    elif fault is Fault.SHORT_AGGREGATE and _is_aggregate3(item):
        results = decode_aggregate3(bytes.fromhex(reply["result"][2:]))
        shorter = [(r.success, r.data) for r in results[:-1]]
        reply["result"] = "0x" + encode(["(bool,bytes)[]"], [shorter]).hex()


def _is_aggregate3(item: dict[str, Any]) -> bool:
    params = item.get("params") or [{}]
    data = params[0].get("data") or params[0].get("input") or ""
    return isinstance(data, str) and data.startswith("0x" + AGGREGATE3.hex())
