"""JSON-RPC transport for one network: web3's HTTP provider, failover across URLs.

This adapter is where transport exceptions become ``ChainUnavailable``, once.
Messages name the network, never a URL (URLs often carry provider keys); the
detail goes to the log, where the redacting filter strips URLs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider

from service.errors import ChainUnavailable
from service.redact import Redactor, redact_url

__all__ = ["RpcClient", "RpcError"]

log = logging.getLogger(__name__)


class RpcError(Exception):
    """The node answered with a JSON-RPC error object (the node is up; the call failed)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"JSON-RPC error {code}: {message[:200]}")
        self.code = code


class RpcClient:
    """Sends JSON-RPC requests to the first URL that answers, remembering which did."""

    def __init__(self, network: str, urls: Sequence[str], attempt_timeout: float) -> None:
        self.network = network
        self._urls = tuple(urls)
        self._timeout = aiohttp.ClientTimeout(total=attempt_timeout)
        # web3's own retries could run for minutes; the caller's deadline rules instead.
        self._providers = [
            AsyncHTTPProvider(
                url, exception_retry_configuration=None, request_kwargs={"timeout": self._timeout}
            )
            for url in self._urls
        ]
        # aiohttp puts the request URL into its exception texts (a 503 names it).
        self._redactor = Redactor(self._urls)
        self._preferred = 0
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()

    async def request(self, method: str, params: list[Any]) -> Any:
        """The ``result`` of one call.  Raises ChainUnavailable or RpcError."""
        response = await self._send(lambda p: p.make_request(method, params))
        return _result(response)

    async def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Results of a JSON-RPC batch, in request order.

        A failed item comes back as an ``RpcError`` instance (not raised), so the
        caller can say which read failed.
        """
        responses = await self._send(lambda p: p.make_batch_request(list(calls)))
        if not isinstance(responses, list):
            _result(responses)  # a single error object answers a rejected batch
            raise ChainUnavailable(self.network, "batch request rejected")
        if len(responses) != len(calls):
            raise ChainUnavailable(self.network, "batch answer has the wrong number of results")
        return [_result_or_error(r) for r in responses]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, send: Any) -> Any:
        await self._ensure_session()
        failures = 0
        order = [(self._preferred + i) % len(self._providers) for i in range(len(self._providers))]
        for index in order:
            provider = self._providers[index]
            try:
                response = await send(provider)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                failures += 1
                log.warning(
                    "network %s: %s failed: %s: %s",
                    self.network,
                    redact_url(self._urls[index]),
                    type(exc).__name__,
                    self._redactor.redact(str(exc)),
                )
                continue
            self._preferred = index
            return response
        raise ChainUnavailable(
            self.network, f"no RPC endpoint answered ({failures} of {len(self._urls)} tried)"
        )

    async def _ensure_session(self) -> None:
        """One keep-alive session shared by all URLs (web3's default closes every connection)."""
        async with self._session_lock:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    timeout=self._timeout,
                    raise_for_status=True,
                    connector=aiohttp.TCPConnector(limit=64),
                )
                for provider in self._providers:
                    await provider.cache_async_session(self._session)


def _result(response: Any) -> Any:
    if not isinstance(response, dict):
        raise RpcError(-1, "malformed JSON-RPC response")
    if "error" in response and response["error"] is not None:
        error = response["error"]
        if isinstance(error, dict):
            raise RpcError(int(error.get("code", -1)), str(error.get("message", "")))
        raise RpcError(-1, str(error))
    if "result" not in response:
        raise RpcError(-1, "JSON-RPC response has no result")
    return response["result"]


def _result_or_error(response: Any) -> Any:
    try:
        return _result(response)
    except RpcError as exc:
        return exc
