"""``HttpWebhookSender``: the aiohttp adapter that POSTs one signed webhook (a ``WebhookSender``).

One session for every send: a total timeout per request, redirects never
followed (a 3xx is a failed attempt), a fixed User-Agent.  Reasons it returns
are short summaries (``HTTP 500``, ``no answer within 10s``) that never name
the URL: its path may hold a token.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from service.domain import WebhookPolicy

__all__ = ["USER_AGENT", "HttpWebhookSender"]

USER_AGENT = "balances-webhooks/1"


class HttpWebhookSender:
    """Sends webhooks over HTTP(S); ``aclose`` when done (the session opens on first use)."""

    def __init__(self, policy: WebhookPolicy, *, max_connections: int = 16) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._timeout = policy.timeout_seconds
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        """None when the receiver answered 2xx, else a short reason naming no URL."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": USER_AGENT},
            )
        try:
            async with self._session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:
            return f"no answer within {self._timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"request failed ({type(exc).__name__})"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
