"""Keeps idle and slow clients from holding the REST shim's connections (and file descriptors).

aiohttp's server has no header timeout: a client that sends half a request head
and then a byte now and then holds its connection, and its file descriptor,
forever.  ``ConnectionGuard`` adds, around aiohttp's own protocol:

- a **header timeout**: a connection must deliver a complete request head within
  ``header_timeout`` of its accept, or of the first byte of its next request once
  it is kept alive;
- a **keep-alive timeout**: at most ``keepalive_timeout`` between a response and the
  first byte of the next request;
- **caps** on open connections, per client address (an IPv6 client is its /64) and
  in total, derived from the process's file-descriptor limit.  A newcomer over a cap
  evicts a connection that is waiting for a request head or idle between requests,
  never one busy with a request (nginx reuses idle keep-alive connections so): over its
  address's cap, its own address's longest-waiting one; over the total cap, the
  longest-waiting one of the client with the most connections waiting.  Only when no
  connection in that scope is waiting is the newcomer refused.  A client that sends its
  request promptly is then served while drippers reconnect as fast as they like: they
  displace each other, not a client holding one connection.  (Each reconnect still
  costs an accept: a flood of new connections is for a limit before the process, in
  the kernel or a proxy.)

Refused, evicted and timed-out connections are aborted, with no response (a refused
one never reaches aiohttp), and counted; the log gets one line when a cap is first
reached, then at most one count per ``report_interval`` while it lasts.

Why a wrapping protocol plus a middleware, rather than a subclass of aiohttp's
``RequestHandler`` or another HTTP server: every hook used is public and stable.
``runner.server`` is aiohttp's protocol factory (what ``loop.create_server`` is given
in aiohttp's own sites); the wrapper forwards the ``asyncio.Protocol`` calls to the
protocol it makes, sees each accept (to admit or refuse before aiohttp allocates
anything) and each arriving byte; a middleware, outermost, says when a request head
is complete (aiohttp calls the app only then) and when the app has answered.
Subclassing ``RequestHandler`` would mean overriding private methods and building
``web.Server`` by hand from the app's private ``_handle``/``_make_request``; a second
HTTP server would mean two HTTP stacks (the service is an aiohttp client too).

One gap: under TLS, asyncio calls the protocol only after the handshake, so a
connection mid-handshake is not counted; ``ssl_handshake_timeout`` (set to the
header timeout by the caller) bounds it instead.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import resource
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

__all__ = [
    "ConnectionCaps",
    "ConnectionGuard",
    "GuardCounts",
    "client_key",
    "fd_limit",
]

log = logging.getLogger(__name__)

# Left to everything else in the process: upstream RPC and webhook connections, the store,
# the gRPC server and its clients, logs, and sockets in flight under a flood (accepted but
# not yet seen by the guard, or evicted but not yet closed: see serve's _ACCEPT_BATCH).
_RESERVED_FDS = 512
_MIN_CONNECTIONS = 16  # even under a tiny fd limit, serve someone
# A derived cap never exceeds this: an unlimited fd limit is not unlimited memory.
_MAX_DERIVED_CONNECTIONS = 10_000
_UNLIMITED_FDS = 1 << 20
_PER_CLIENT_SHARE = 8  # a client may hold an eighth of the total by default
_IPV6_CLIENT_PREFIX = 64  # one IPv6 client owns a /64


def fd_limit() -> int:
    """The process's soft limit on open file descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED_FDS if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class ConnectionCaps:
    fd_limit: int
    max_connections: int
    max_per_client: int

    @classmethod
    def derive(
        cls, fd_limit: int, *, max_connections: int = 0, max_per_client: int = 0
    ) -> ConnectionCaps:
        """Caps the fd limit allows: configured values (0 = derive) never exceed them.

        A quarter of the limit, at least ``_RESERVED_FDS``, is left to the rest of the
        process; the per-client cap defaults to an eighth of the total.
        """
        allowed = max(_MIN_CONNECTIONS, fd_limit - max(_RESERVED_FDS, fd_limit // 4))
        total = (
            min(max_connections, allowed)
            if max_connections
            else min(allowed, _MAX_DERIVED_CONNECTIONS)
        )
        per_client = (
            min(max_per_client, total) if max_per_client else max(1, total // _PER_CLIENT_SHARE)
        )
        return cls(fd_limit, total, per_client)


def client_key(peername: object) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return ""  # a Unix socket or an unknown peer: all such count as one client
    host = peername[0]
    if ":" not in host:
        return host  # IPv4, already canonical from the kernel (the common, hot path)
    host = host.partition("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


class _Phase(enum.Enum):
    HEAD = "waiting for a request head"
    IDLE = "idle between requests"
    BUSY = "busy with a request"


@dataclass
class GuardCounts:
    """What the guard has done since it started; ``open``, ``peak_open``: connections now, most."""

    open: int = 0
    peak_open: int = 0
    admitted: int = 0
    over_client_cap: int = 0  # newcomers finding their address at its cap
    over_total_cap: int = 0  # newcomers finding the total at its cap (their address not)
    refused: int = 0  # newcomers over a cap with every connection in scope busy
    evicted: int = 0  # connections displaced by a newcomer over a cap
    header_timeouts: int = 0
    keepalive_timeouts: int = 0


class _Connection(asyncio.Protocol):
    """One accepted connection: the guard's state for it, and aiohttp's protocol inside."""

    __slots__ = ("_guard", "_make_inner", "client", "inner", "phase", "timer", "transport")

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_inner = make_inner
        self.inner: asyncio.Protocol | None = None  # made only once admitted
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.phase: _Phase | None = None  # None: not (or no longer) counted
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self._guard._admit(self):
            transport.abort()
            return
        self.inner = self._make_inner()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.phase is _Phase.IDLE:  # the next request begins: its head has a deadline
            self._guard._enter(self, _Phase.HEAD)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class _WaitingRoom:
    """Connections waiting for a request head or idle, per client, longest-waiting first,
    and the clients by how many they have waiting (to find the heaviest at once)."""

    def __init__(self) -> None:
        self._by_client: dict[str, OrderedDict[_Connection, None]] = {}
        self._clients_by_count: dict[int, dict[str, None]] = {}
        self._most = 0

    def add(self, conn: _Connection) -> None:
        """``conn`` starts waiting, or waits again: it is now the one that has waited least."""
        queue = self._by_client.setdefault(conn.client, OrderedDict())
        if conn in queue:
            queue.move_to_end(conn)
            return
        queue[conn] = None
        self._recount(conn.client, len(queue) - 1, len(queue))

    def discard(self, conn: _Connection) -> None:
        queue = self._by_client.get(conn.client)
        if queue is None or conn not in queue:
            return
        del queue[conn]
        self._recount(conn.client, len(queue) + 1, len(queue))
        if not queue:
            del self._by_client[conn.client]

    def longest_waiting_of(self, client: str) -> _Connection | None:
        queue = self._by_client.get(client)
        return next(iter(queue)) if queue else None

    def longest_waiting_of_heaviest(self) -> _Connection | None:
        """The longest-waiting connection of the client with the most waiting."""
        while self._most and self._most not in self._clients_by_count:
            self._most -= 1
        if not self._most:
            return None
        return self.longest_waiting_of(next(iter(self._clients_by_count[self._most])))

    def _recount(self, client: str, old: int, new: int) -> None:
        if old:
            clients = self._clients_by_count[old]
            del clients[client]
            if not clients:
                del self._clients_by_count[old]
        if new:
            self._clients_by_count.setdefault(new, {})[client] = None
            self._most = max(self._most, new)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """Admits, times out and evicts the connections of one listener (see the module doc)."""

    def __init__(
        self,
        caps: ConnectionCaps,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        report_interval: float = 60.0,
    ) -> None:
        self.caps = caps
        self._timeouts = {_Phase.HEAD: header_timeout, _Phase.IDLE: keepalive_timeout}
        self._report_interval = report_interval
        self._loop = asyncio.get_running_loop()
        self.counts = GuardCounts()
        self._per_client: dict[str, int] = {}
        self._waiting = _WaitingRoom()
        self._reported = GuardCounts()  # the counts at the last report
        self._report_timer: asyncio.TimerHandle | None = None

        @web.middleware
        async def track_requests(request: web.Request, handler: _Handler) -> web.StreamResponse:
            # aiohttp calls the app once a request head is complete.
            transport = request.transport
            conn = transport.get_protocol() if transport is not None else None
            if not isinstance(conn, _Connection) or conn.phase is None:
                return await handler(request)
            self._enter(conn, _Phase.BUSY)
            try:
                return await handler(request)
            finally:
                # Idle from here: aiohttp writes the answer from its buffers.  Bytes that came
                # in while busy (a pipelined head) fall under the keep-alive timeout.
                if conn.phase is _Phase.BUSY:
                    self._enter(conn, _Phase.IDLE)

        self.middleware = track_requests

    def protocol_factory(
        self, make_protocol: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A factory for ``loop.create_server``: ``make_protocol``'s protocols, guarded."""
        return lambda: _Connection(self, make_protocol)

    def open_by_client(self) -> dict[str, int]:
        return dict(self._per_client)

    def close(self) -> None:
        """Stop reporting (aiohttp's runner closes the connections themselves)."""
        if self._report_timer is not None:
            self._report_timer.cancel()
            self._report_timer = None

    # --- accounting ---------------------------------------------------------------------

    def _admit(self, conn: _Connection) -> bool:
        assert conn.transport is not None
        client = client_key(conn.transport.get_extra_info("peername"))
        conn.client = client
        # A full address displaces only its own connections; over the total cap, the client
        # with the most connections waiting loses one, so a light client is never displaced
        # by a heavy one's churn, however fast it reconnects.
        full_address = self._per_client.get(client, 0) >= self.caps.max_per_client
        counts = self.counts
        if full_address or counts.open >= self.caps.max_connections:
            self._pressure()
            if full_address:
                counts.over_client_cap += 1
                victim = self._waiting.longest_waiting_of(client)
            else:
                counts.over_total_cap += 1
                victim = self._waiting.longest_waiting_of_heaviest()
            if not self._make_room(victim):
                return False
        counts.admitted += 1
        counts.open += 1
        counts.peak_open = max(counts.peak_open, counts.open)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self._enter(conn, _Phase.HEAD)
        return True

    def _make_room(self, victim: _Connection | None) -> bool:
        """Evict ``victim``; False (a refusal) if there is none."""
        if victim is None:
            self.counts.refused += 1
            return False
        self.counts.evicted += 1
        self._close(victim)
        return True

    def _enter(self, conn: _Connection, phase: _Phase) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.phase = phase
        if phase is _Phase.BUSY:
            self._waiting.discard(conn)
        else:
            self._waiting.add(conn)
            conn.timer = self._loop.call_later(self._timeouts[phase], self._expire, conn)

    def _expire(self, conn: _Connection) -> None:
        conn.timer = None
        if conn.phase is _Phase.HEAD:
            self.counts.header_timeouts += 1
        elif conn.phase is _Phase.IDLE:
            self.counts.keepalive_timeouts += 1
        else:
            return
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._forget(conn)
        if conn.transport is not None:
            conn.transport.abort()  # nothing is owed to a waiting connection: no flush

    def _forget(self, conn: _Connection) -> None:
        """Stop counting ``conn`` (idempotent: eviction and ``connection_lost`` both call it)."""
        if conn.phase is None:
            return
        conn.phase = None
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self.counts.open -= 1
        self._waiting.discard(conn)
        left = self._per_client[conn.client] - 1
        if left:
            self._per_client[conn.client] = left
        else:
            del self._per_client[conn.client]

    # --- reporting: one line when a cap is first reached, then one per interval -------------

    def _pressure(self) -> None:
        if self._report_timer is not None:
            return
        log.warning(
            "REST connections at a cap (%d open; at most %d, %d per client address):"
            " newcomers evict the longest-waiting connection; counts every %gs while it lasts",
            self.counts.open,
            self.caps.max_connections,
            self.caps.max_per_client,
            self._report_interval,
        )
        self._reported = _copy(self.counts)
        self._report_timer = self._loop.call_later(self._report_interval, self._report)

    def _report(self) -> None:
        now, then = self.counts, self._reported
        over_client = now.over_client_cap - then.over_client_cap
        over_total = now.over_total_cap - then.over_total_cap
        if not over_client and not over_total:
            self._report_timer = None  # quiet again: the next pressure logs at once
            return
        log.warning(
            "REST connections in the last %gs: %d newcomers over their address's cap and %d"
            " over the total cap; %d connections evicted to make room, %d newcomers refused"
            " (all busy), %d closed without a request head in time, %d idle past keep-alive;"
            " %d open",
            self._report_interval,
            over_client,
            over_total,
            now.evicted - then.evicted,
            now.refused - then.refused,
            now.header_timeouts - then.header_timeouts,
            now.keepalive_timeouts - then.keepalive_timeouts,
            now.open,
        )
        self._reported = _copy(now)
        self._report_timer = self._loop.call_later(self._report_interval, self._report)


def _copy(counts: GuardCounts) -> GuardCounts:
    return GuardCounts(**vars(counts))
