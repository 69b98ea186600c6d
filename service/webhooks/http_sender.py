"""The aiohttp adapters of webhooks: ``HttpWebhookSender`` POSTs one signed webhook (a
``WebhookSender``), ``SystemResolver`` looks host names up (a ``HostResolver``).

One session for every send: a total timeout per request, redirects never
followed (a 3xx is a failed attempt), a fixed User-Agent, no proxy from the
environment.  Its connector resolves names through ``WebhookDestinations``:
one lookup per connection, every address vetted, and only those addresses
connected to, so a DNS server that answers differently the second time
(rebinding) gains nothing; aiohttp's DNS cache is off, so no answer is used
that was not vetted for this connection.  TLS still verifies the URL's host
name.  Reasons it returns are short summaries (``HTTP 500``, ``no answer within
10s``) that never name the URL (its path may hold a token) or an address.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from ipaddress import ip_address

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from service.domain import WebhookPolicy
from service.errors import InvalidArgument
from service.webhooks.destinations import NOT_CANONICAL, WebhookDestinations

__all__ = ["USER_AGENT", "HttpWebhookSender", "SystemResolver"]

USER_AGENT = "balances-webhooks/1"
REFUSED = "url no longer allowed"  # the prefix of a reason for a destination the rules refuse


class SystemResolver:
    """The operating system's resolver (``getaddrinfo`` in a thread: hosts files and
    DNS, as any other program here would see them); a ``HostResolver``."""

    def __init__(self) -> None:
        self._resolver: ThreadedResolver | None = None  # needs the running loop

    async def resolve(self, host: str, port: int) -> list[str]:
        if self._resolver is None:
            self._resolver = ThreadedResolver()
        try:
            found = await self._resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except UnicodeError as exc:  # the idna codec refused the name: a failed lookup
            raise OSError("not a name the resolver can encode") from exc
        return [r["host"] for r in found]


class _Refused(OSError):
    """A destination rule refused every connection to a host (aiohttp wraps OSErrors)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _VettingResolver(AbstractResolver):
    """aiohttp's view of ``WebhookDestinations.addresses``."""

    def __init__(self, destinations: WebhookDestinations) -> None:
        self._destinations = destinations

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            found = await self._destinations.addresses(host, port)
        except InvalidArgument as exc:
            raise _Refused(str(exc)) from None
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ip_address(address).version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in found
        ]

    async def close(self) -> None:
        return None


class HttpWebhookSender:
    """Sends webhooks over HTTP(S); ``aclose`` when done (the session opens on first use)."""

    def __init__(
        self,
        policy: WebhookPolicy,
        destinations: WebhookDestinations,
        *,
        max_connections: int = 16,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._timeout = policy.timeout_seconds
        self._destinations = destinations
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        """None when the receiver answered 2xx, else a short reason naming no URL."""
        try:
            target = self._destinations.check_url(url).target
            parsed = URL(url)  # what aiohttp would make of it
        except InvalidArgument as exc:
            return f"{REFUSED}: {exc}"
        except ValueError:
            return f"{REFUSED}: url is malformed"
        if (parsed.raw_host, parsed.port) != (target.host, target.port):
            # aiohttp would connect elsewhere than the rules looked: never send.
            return f"{REFUSED}: {NOT_CANONICAL}"
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    resolver=_VettingResolver(self._destinations),
                    use_dns_cache=False,
                ),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,  # no proxy from the environment: it would do its own lookups
            )
        try:
            async with self._session.post(
                parsed, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:
            return f"no answer within {self._timeout:g}s"
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, _Refused):
                return f"{REFUSED}: {exc.os_error.reason}"
            return "url host could not be resolved"
        except aiohttp.ClientError as exc:
            return f"request failed ({type(exc).__name__})"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
