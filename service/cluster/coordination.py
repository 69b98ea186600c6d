"""What makes one ``balances serve`` process one replica among many.

- One ``Leader`` per network runs that network's block follower (and its newHeads
  subscription) while holding the lease ``balances:follower:<network>``; one more
  runs webhook delivery under ``balances:webhook-delivery``.  The lease is a
  PostgreSQL advisory lock when ``[directory] url`` is set (replicas share the
  database), else a file lock beside the SQLite file (``--workers N`` on one
  machine).  A lone process simply wins every lease at start.
- With ``[cache] redis_url``, the ``StreamBus`` (``bus.py``) lets the leader's
  follower read for every replica's watch streams and hands its findings to every
  replica's hub.

``Service.start`` starts it; ``open_service`` registers ``aclose``, which stops
every duty and releases every lease, so another replica takes over at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.cluster.bus import (
    RedisClient,
    WatchListener,
    WatchPublisher,
    WatchRegistry,
    WatchRelay,
    redis_client,
)
from service.cluster.leader import Leader
from service.cluster.leases import FileLease, PostgresLease, lease_file, postgres_connector
from service.ports import Lease
from service.settings import Settings

__all__ = [
    "DELIVERY_LEASE",
    "Coordination",
    "StreamBus",
    "follower_lease_name",
    "make_lease",
    "open_stream_bus",
]

DELIVERY_LEASE = "balances:webhook-delivery"


def follower_lease_name(network: str) -> str:
    return f"balances:follower:{network}"


class Duty(Protocol):
    """A follower, a newHeads subscription: started and stopped again and again."""

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


class AsyncDuty(Protocol):
    """Webhook delivery: its ``start`` is a coroutine."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class StreamBus:
    """The Redis parts of streams on any replica (see ``bus.py``)."""

    client: RedisClient
    registry: WatchRegistry  # the leader follower's WatchedSource
    publisher: WatchPublisher  # the leader follower's listener
    relay: WatchRelay  # feeds this replica's hub

    def start(self) -> None:
        self.registry.start()
        self.relay.start()

    async def aclose(self) -> None:
        await self.relay.aclose()
        await self.registry.aclose()
        await self.client.aclose()


def open_stream_bus(
    url: str,
    password: str | None,
    *,
    hub: Any,
    networks: Sequence[str],
    listeners: Sequence[WatchListener],
    interval: float,
) -> StreamBus:
    """The bus on Redis ``url`` for ``hub`` (this replica's ``WatchHub``); ``listeners`` get
    each relayed block in order (the streams' cache refresh, then the hub).  Connects lazily.

    Its own client: the relay's subscription holds a connection and must not time out
    while no block changes anything."""
    client = redis_client(url, password)
    registry = WatchRegistry(client, hub, networks, interval=interval)
    return StreamBus(
        client=client,
        registry=registry,
        publisher=WatchPublisher(client, registry),
        relay=WatchRelay(client, networks, listeners),
    )


def make_lease(settings: Settings, name: str) -> Lease:
    """The lease ``name`` on what the replicas share: PostgreSQL, else the SQLite file's
    directory."""
    lease_seconds = settings.cluster_lease_seconds
    url = settings.directory_url
    if url is None:
        return FileLease(name, lease_file(settings.directory_path, name))
    connect = postgres_connector(url, settings.directory_password, name, lease_seconds)
    return PostgresLease(name, connect, timeout=lease_seconds)


class Coordination:
    """This process's leaders (and stream bus); ``start`` contends, ``aclose`` steps down."""

    def __init__(self, leaders: Sequence[Leader], bus: StreamBus | None = None) -> None:
        self.leaders: Mapping[str, Leader] = {leader.name: leader for leader in leaders}
        self.bus = bus
        self._closed = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        followers: Mapping[str, Duty],
        new_heads: Mapping[str, Sequence[Duty]],
        delivery: AsyncDuty,
        bus: StreamBus | None = None,
        lease: Callable[[Settings, str], Lease] = make_lease,
    ) -> Coordination:
        check = settings.watch.poll_interval_seconds
        leaders = [
            Leader(
                lease(settings, follower_lease_name(network)),
                elected=_starting(follower, *new_heads.get(network, ())),
                deposed=_stopping(*new_heads.get(network, ()), follower),
                check_interval=check,
            )
            for network, follower in followers.items()
        ]
        leaders.append(
            Leader(
                lease(settings, DELIVERY_LEASE),
                elected=delivery.start,
                deposed=delivery.aclose,
                check_interval=check,
            )
        )
        return cls(leaders, bus)

    def follower_leader(self, network: str) -> Leader:
        return self.leaders[follower_lease_name(network)]

    @property
    def delivery_leader(self) -> Leader:
        return self.leaders[DELIVERY_LEASE]

    def start(self) -> None:
        """Join the cluster: the bus first, so the first block led here reaches the hub."""
        if self.bus is not None:
            self.bus.start()
        for leader in self.leaders.values():
            leader.start()

    async def aclose(self) -> None:
        """Stop every duty, release every lease, leave the bus (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(leader.aclose() for leader in self.leaders.values()))
        if self.bus is not None:
            await self.bus.aclose()


def _starting(*duties: Duty) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        for duty in duties:
            duty.start()

    return start


def _stopping(*duties: Duty) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        for duty in duties:
            await duty.aclose()

    return stop
