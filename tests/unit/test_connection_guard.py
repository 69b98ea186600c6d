"""The REST shim's connection guard: caps, eviction order, header and keep-alive timeouts.

Most tests drive the real gateway (``start_gateway``, no gRPC server behind it: the
routes used answer without one, or wait for a body) over loopback sockets from
several 127.x source addresses, with tiny timeouts and caps; the guard's counts say
what it did.  One uses fake transports, to count log lines over many evictions cheaply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from service.api.services import API_SERVICES
from service.errors import ConfigError
from service.gateway.connections import ConnectionCaps, ConnectionGuard, client_key
from service.gateway.limits import RestLimits
from service.gateway.serve import RunningGateway, start_gateway
from service.settings.loader import parse_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOWHERE = "unix:/nonexistent/balances-grpc.sock"  # no call these tests make reaches gRPC
NO_ROUTE = b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"  # 404 from the shim itself
DRIP_HEAD = b"GET /x HTTP/1.1\r\nX: "
# A body route: the shim waits for the 10 announced bytes, so the connection is busy.
BODY_PENDING = b"PATCH /v1/webhooks HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"
GUARD_LOG = "service.gateway.connections"


# --- caps from the fd limit -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fd_limit", "total", "per_client"),
    [
        (1024, 512, 64),  # the common default: half kept for the rest of the process
        (4096, 3072, 384),  # a quarter kept
        (20_000, 10_000, 1250),  # a derived cap stops at 10,000
        (300, 16, 2),  # a tiny limit still serves someone
    ],
)
async def test_caps_are_derived_from_the_fd_limit(
    fd_limit: int, total: int, per_client: int
) -> None:
    assert ConnectionCaps.derive(fd_limit) == ConnectionCaps(fd_limit, total, per_client)


async def test_configured_caps_are_used_but_never_above_what_the_fd_limit_allows() -> None:
    assert ConnectionCaps.derive(1024, max_connections=100) == ConnectionCaps(1024, 100, 12)
    assert ConnectionCaps.derive(1024, max_connections=5000, max_per_client=5000) == (
        ConnectionCaps(1024, 512, 512)
    )
    assert ConnectionCaps.derive(20_000, max_connections=15_000, max_per_client=10) == (
        ConnectionCaps(20_000, 15_000, 10)
    )


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("max_connections", -1, "between 0 and"),
        ("max_connections_per_client", 1_000_001, "between 0 and"),
        ("header_timeout_seconds", 0, "positive"),
        ("keepalive_timeout_seconds", float("inf"), "positive"),
    ],
)
async def test_bad_connection_limits_are_refused(field: str, value: Any, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        RestLimits(**{field: value})
    assert field in str(caught.value)


MINIMAL_CONFIG = {
    "networks": [
        {
            "name": "polygon",
            "chain_id": 137,
            "rpc_urls": ["https://polygon.example.com"],
            "tokens": [
                {
                    "symbol": "USDC",
                    "address": "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359",
                    "decimals": 6,
                    "price": {"peg": "1"},
                }
            ],
        }
    ]
}


async def test_the_connection_limits_load_from_the_rest_table(tmp_path: Path) -> None:
    rest = {
        "header_timeout_seconds": 5,
        "keepalive_timeout_seconds": 20.5,
        "max_connections": 300,
        "max_connections_per_client": 30,
    }
    settings = parse_settings({**MINIMAL_CONFIG, "rest": rest}, base_dir=tmp_path)
    assert settings.rest is not None
    assert settings.rest.limits == RestLimits(
        header_timeout_seconds=5.0,
        keepalive_timeout_seconds=20.5,
        max_connections=300,
        max_connections_per_client=30,
    )
    defaults = parse_settings({**MINIMAL_CONFIG, "rest": {}}, base_dir=tmp_path)
    assert defaults.rest is not None
    assert (defaults.rest.limits.max_connections, defaults.rest.limits.header_timeout_seconds) == (
        0,
        10.0,
    )
    with pytest.raises(ConfigError, match=r"rest\.max_connections"):
        parse_settings({**MINIMAL_CONFIG, "rest": {"max_connections": "many"}}, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("peername", "key"),
    [
        (("127.0.0.2", 5000), "127.0.0.2"),
        (("::ffff:10.1.2.3", 5000, 0, 0), "10.1.2.3"),  # IPv4-mapped: the IPv4 client
        (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),  # IPv6: its /64
        (("2001:db8:1:2:bbbb::9", 5001, 0, 0), "2001:db8:1:2::/64"),
        (("fe80::1%eth0", 5000, 0, 2), "fe80::/64"),
        ("/run/balances.sock", ""),  # a Unix socket
        (None, ""),
    ],
)
async def test_a_client_is_its_address_or_its_ipv6_slash_64(peername: object, key: str) -> None:
    assert client_key(peername) == key


# --- over real sockets ------------------------------------------------------------------


class Served:
    """A guarded gateway, and the test's connections to it (closed at the end)."""

    def __init__(self, running: RunningGateway) -> None:
        self.running = running
        self.guard = running.guard
        self.clients: list[Client] = []

    async def connect(self, source: str = "127.0.0.1") -> Client:
        """A connection from ``source`` (any 127.x address is this host's), once the guard
        has admitted or refused it."""
        counts = self.guard.counts
        seen = counts.admitted + counts.refused
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.running.port, local_addr=(source, 0)
        )
        client = Client(reader, writer)
        self.clients.append(client)
        await until(lambda: counts.admitted + counts.refused > seen, "the guard to see it")
        return client


@asynccontextmanager
async def gateway(**limits: Any) -> AsyncIterator[Served]:
    running = await start_gateway(NOWHERE, "127.0.0.1:0", API_SERVICES, RestLimits(**limits))
    served = Served(running)
    try:
        yield served
    finally:
        for client in served.clients:
            await client.aclose()
        await running.aclose()


class Client:
    """One raw connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response_status(self) -> int:
        async with asyncio.timeout(5):
            line = await self.reader.readline()
            assert line.startswith(b"HTTP/1.1 "), line
            length = 0
            while (header := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await self.reader.readexactly(length)
        return int(line.split()[1])

    async def closed_by_server(self, within: float = 5) -> bool:
        """True once the server has closed (EOF or reset); False if still open after ``within``."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()


async def until(condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def test_a_head_dripped_byte_by_byte_is_cut_off_at_the_header_timeout() -> None:
    async with gateway(header_timeout_seconds=0.3) as served:
        dripper = await served.connect()
        await dripper.send(DRIP_HEAD)
        closed = asyncio.create_task(dripper.closed_by_server())
        for _ in range(40):  # bytes keep coming: they do not extend the deadline
            if closed.done():
                break
            dripper.writer.write(b"a")
            await asyncio.sleep(0.05)
        assert await closed
        assert served.guard.counts.header_timeouts == 1
        assert served.guard.counts.open == 0
        # A connection that says nothing at all goes the same way.
        silent = await served.connect()
        assert await silent.closed_by_server()
        assert served.guard.counts.header_timeouts == 2


async def test_a_kept_alive_connection_is_served_then_closed_when_idle_too_long() -> None:
    async with gateway(header_timeout_seconds=5, keepalive_timeout_seconds=0.3) as served:
        client = await served.connect()
        for _ in range(3):  # keep-alive works: one connection, several requests
            await client.send(NO_ROUTE)
            assert await client.response_status() == 404
        assert served.guard.counts.admitted == 1
        assert await client.closed_by_server()
        counts = served.guard.counts
        assert (counts.keepalive_timeouts, counts.header_timeouts, counts.open) == (1, 0, 0)


async def test_the_next_request_on_a_kept_alive_connection_has_its_own_head_deadline() -> None:
    async with gateway(header_timeout_seconds=0.3, keepalive_timeout_seconds=30) as served:
        client = await served.connect()
        await client.send(NO_ROUTE)
        assert await client.response_status() == 404
        await client.send(DRIP_HEAD)  # the next request begins, and never ends
        assert await client.closed_by_server()
        counts = served.guard.counts
        assert (counts.header_timeouts, counts.keepalive_timeouts) == (1, 0)


async def test_a_full_address_displaces_its_own_longest_waiting_connection() -> None:
    async with gateway(max_connections=10, max_connections_per_client=2) as served:
        # Another address got to two waiting first: only the full address's own one goes.
        others = [await served.connect("127.0.0.3") for _ in range(2)]
        first = await served.connect("127.0.0.2")
        second = await served.connect("127.0.0.2")
        third = await served.connect("127.0.0.2")
        assert await first.closed_by_server()
        assert served.guard.open_by_client() == {"127.0.0.2": 2, "127.0.0.3": 2}
        for still_open in (second, third, *others):
            await still_open.send(NO_ROUTE)
            assert await still_open.response_status() == 404
        assert (served.guard.counts.evicted, served.guard.counts.refused) == (1, 0)


async def test_busy_connections_are_never_evicted_and_newcomers_are_refused_when_all_are() -> None:
    async with gateway(max_connections=10, max_connections_per_client=2) as served:
        busy = await served.connect("127.0.0.2")
        await busy.send(BODY_PENDING)  # the shim now waits for the body: a request in progress
        waiting = await served.connect("127.0.0.2")
        await until(lambda: served.guard.counts.admitted == 2, "both admitted")
        newcomer = await served.connect("127.0.0.2")
        assert await waiting.closed_by_server()  # the waiting one made room, not the busy one
        await newcomer.send(BODY_PENDING)
        await asyncio.sleep(0.05)  # let the shim start on the newcomer's request
        refused = await served.connect("127.0.0.2")
        assert await refused.closed_by_server()
        counts = served.guard.counts
        assert (counts.evicted, counts.refused, counts.open) == (1, 1, 2)
        # A refused connection never reached aiohttp.
        assert served.running.runner.server is not None
        assert len(served.running.runner.server.connections) == 2
        await busy.send(b"{}".ljust(10))
        # Its request goes on (to a gRPC server that is not there): answered, not cut off.
        assert await busy.response_status() == 503


async def test_over_the_total_cap_the_client_with_most_waiting_loses_its_longest_waiting() -> None:
    async with gateway(max_connections=4, max_connections_per_client=4) as served:
        lone = await served.connect("127.0.0.2")  # the longest-waiting of all, but alone
        heavy_first = await served.connect("127.0.0.3")
        heavy_second = await served.connect("127.0.0.3")
        heavy_busy = await served.connect("127.0.0.3")
        await heavy_busy.send(BODY_PENDING)  # busy: not waiting, so not counted as waiting
        await asyncio.sleep(0.05)
        await served.connect("127.0.0.4")
        assert await heavy_first.closed_by_server()
        assert served.guard.open_by_client() == {"127.0.0.2": 1, "127.0.0.3": 2, "127.0.0.4": 1}
        # A kept-alive connection waits again from its last response: it has waited least.
        await heavy_second.send(NO_ROUTE)
        assert await heavy_second.response_status() == 404
        # Every client has one waiting now; among equals the lone one, first to get there, goes.
        await served.connect("127.0.0.5")
        assert await lone.closed_by_server()
        assert served.guard.counts.evicted == 2
        assert served.guard.open_by_client() == {"127.0.0.3": 2, "127.0.0.4": 1, "127.0.0.5": 1}


async def test_a_light_client_is_not_displaced_by_a_heavy_clients_churn() -> None:
    async with gateway(max_connections=8, max_connections_per_client=8) as served:
        light = await served.connect("127.0.0.1")  # connected first: the longest-waiting
        for _ in range(50):
            await served.connect("127.0.0.2")  # each over the cap displaces the heavy's own
        assert served.guard.open_by_client() == {"127.0.0.1": 1, "127.0.0.2": 7}
        await light.send(NO_ROUTE)
        assert await light.response_status() == 404
        assert served.guard.counts.evicted == 43


async def test_a_prompt_client_is_served_while_drippers_hold_every_slot() -> None:
    async with gateway(max_connections=8, max_connections_per_client=8) as served:
        drippers = [await served.connect("127.0.0.2") for _ in range(8)]
        for dripper in drippers:
            await dripper.send(DRIP_HEAD)
        for _ in range(5):  # each one stays open (idle), so the next needs room again
            prompt = await served.connect("127.0.0.1")
            await prompt.send(NO_ROUTE)
            assert await prompt.response_status() == 404
        assert served.guard.counts.evicted == 5
        assert served.guard.open_by_client() == {"127.0.0.1": 5, "127.0.0.2": 3}
        assert served.guard.counts.refused == 0
        assert served.guard.counts.peak_open == 8


async def test_a_cap_under_pressure_logs_one_line_not_one_per_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with gateway(max_connections=10, max_connections_per_client=1) as served:
        for _ in range(30):
            await served.connect("127.0.0.2")  # each displaces the one before
        assert served.guard.counts.evicted == 29
    guard_lines = [r for r in caplog.records if r.name == GUARD_LOG]
    assert len(guard_lines) == 1
    assert "at a cap" in guard_lines[0].getMessage()
    started = [r.getMessage() for r in caplog.records if "REST connections: fd limit" in r.message]
    assert len(started) == 1 and "at most 10 open, 1 per client address" in started[0]


# --- fake transports: the summary over time ------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: asyncio.Protocol, host: str) -> None:
        super().__init__()
        self._protocol = protocol
        self._peer = (host, 40000)
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True  # as asyncio does: connection_lost on the next loop turn
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)


class Inner(asyncio.Protocol):
    made: list[Inner] = []

    def __init__(self) -> None:
        Inner.made.append(self)
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def test_while_pressure_lasts_one_summary_per_interval_with_the_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=GUARD_LOG)
    Inner.made.clear()
    guard = ConnectionGuard(
        ConnectionCaps(1024, 2, 2), header_timeout=60, keepalive_timeout=60, report_interval=0.1
    )
    factory = guard.protocol_factory(Inner)
    try:
        transports = []
        for _ in range(50):
            protocol = factory()
            transport = FakeTransport(protocol, "127.0.0.9")
            protocol.connection_made(transport)
            transports.append(transport)
        assert sum(t.aborted for t in transports) == 48
        assert len(Inner.made) == 50 and sum(i.lost for i in Inner.made) == 0
        await asyncio.sleep(0)  # the evicted ones' connection_lost
        assert sum(i.lost for i in Inner.made) == 48
        await until(lambda: len(caplog.records) == 2, "the summary")
        summary = caplog.records[1].getMessage()
        assert "48 newcomers over their address's cap and 0 over the total cap" in summary
        assert "48 connections evicted to make room, 0 newcomers refused" in summary
        assert summary.endswith("; 2 open")
        await asyncio.sleep(0.25)  # quiet now: no further lines
        assert len(caplog.records) == 2
        for _ in range(10):  # pressure again: a first line again, then only the new counts
            protocol = factory()
            protocol.connection_made(FakeTransport(protocol, "127.0.0.9"))
        await until(lambda: len(caplog.records) == 4, "the second summary")
        assert "at a cap" in caplog.records[2].getMessage()
        assert "10 connections evicted to make room" in caplog.records[3].getMessage()
    finally:
        guard.close()
