"""Health per network, from the outcomes of reads: can this network be read right now?

Every read of a network's chain reports its outcome here: the balance queries'
and the block followers' reads go through ``observed(network, source)``.  A
read that succeeded makes the network serving; one that failed with
``ChainUnavailable`` (every provider failed) makes it failing.  A failing
network stays serving while its last success is at most its
``max_stale_seconds`` old (stale-if-error can still answer from reads of that
age); after that, and at once when that is 0, it is not serving.

A read cut short by its caller's own deadline (shorter than the full read
timeout) says nothing about the network and is not counted.

Nobody may be reading a network (no balance requests, nobody watching): every
``probe_interval`` a network with no outcome for that long is asked for its
head block, so a failure, and a recovery, is noticed without traffic.  Each
step also re-judges every network (a stale window runs out with no new read).

Listeners (the gRPC health service, wired in the transport) are given every
network's status whenever one changes, and on ``publish``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from service.background import BackgroundLoop
from service.domain import BlockHeader, Snapshot
from service.errors import ChainUnavailable
from service.ports import SnapshotSource

__all__ = ["NetworkHealth", "NetworkStatusListener"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class NetworkStatusListener(Protocol):
    async def networks_changed(self, serving: Mapping[str, bool]) -> None:
        """Every network's status (True: it can be read, or is within stale-if-error)."""
        ...


@dataclass
class _State:
    last_success: float  # clock readings
    last_outcome: float  # a read counted, success or failure (a probe is due after that)
    failing: bool = False


class NetworkHealth:
    """Tracks every configured network; ``start`` runs the probes, ``aclose`` stops them."""

    def __init__(
        self,
        sources: Mapping[str, SnapshotSource],
        max_stale: Mapping[str, float],
        *,
        probe_interval: float,
        read_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``sources``: each network's chain (probed with ``head_number``); ``read_timeout``:
        the full budget of a read (a failure within a shorter one is the caller's deadline)."""
        self._sources = dict(sources)
        self._max_stale = dict(max_stale)
        self._read_timeout = read_timeout
        self._probe_interval = probe_interval
        self._clock = clock
        now = clock()
        # Start-up has just checked every chain: each network starts as serving.
        self._states = {name: _State(now, now) for name in self._sources}
        self._listeners: list[NetworkStatusListener] = []
        self._published: dict[str, bool] | None = None
        self._lock = asyncio.Lock()
        self._loop = BackgroundLoop("network-health", self._step, probe_interval)

    # --- wiring and lifecycle -----------------------------------------------------------

    def add_listener(self, listener: NetworkStatusListener) -> None:
        self._listeners.append(listener)

    def observed(self, network: str, source: SnapshotSource) -> SnapshotSource:
        """``source`` with every read's outcome reported here as ``network``'s."""
        return _ObservedSource(self, network, source)

    def start(self) -> None:
        """Probe and re-judge every ``probe_interval`` in a task; idempotent."""
        self._loop.start()

    async def aclose(self) -> None:
        await self._loop.aclose()

    # --- what it says -------------------------------------------------------------------

    def serving(self, network: str) -> bool:
        state = self._states[network]
        if not state.failing:
            return True
        max_stale = self._max_stale.get(network, 0.0)
        return max_stale > 0 and self._clock() - state.last_success <= max_stale

    def statuses(self) -> dict[str, bool]:
        return {name: self.serving(name) for name in self._states}

    async def publish(self) -> None:
        """Give every listener every network's status now, changed or not."""
        await self._publish(force=True)

    # --- what it is told ----------------------------------------------------------------

    async def succeeded(self, network: str) -> None:
        state = self._states[network]
        state.last_success = state.last_outcome = self._clock()
        if state.failing:
            state.failing = False
            log.info("network %s: read again", network)
        await self._publish()

    async def failed(self, network: str, reason: str) -> None:
        state = self._states[network]
        state.last_outcome = self._clock()
        if not state.failing:
            state.failing = True
            log.info("network %s: a read failed on every provider: %s", network, reason)
        await self._publish()

    async def observe(self, network: str, read: Awaitable[T], *, budget: float | None = None) -> T:
        """``read``'s result, its outcome counted as ``network``'s.  A read given a
        ``budget`` below the full read timeout that ran out of it is not counted."""
        started = self._clock()
        try:
            result = await read
        except ChainUnavailable as exc:
            short = budget is not None and budget < self._read_timeout
            if not (short and self._clock() - started >= (budget or 0.0)):
                await self.failed(network, exc.reason)
            raise
        await self.succeeded(network)
        return result

    # --- inside -------------------------------------------------------------------------

    async def _step(self) -> None:
        now = self._clock()
        idle = [n for n, s in self._states.items() if now - s.last_outcome >= self._probe_interval]
        if idle:
            await asyncio.gather(*(self._probe(n) for n in idle))
        await self._publish()

    async def _probe(self, network: str) -> None:
        try:
            await self.observe(network, self._sources[network].head_number())
        except ChainUnavailable:
            pass  # counted
        except Exception:
            log.exception("network %s: health probe failed unexpectedly", network)

    async def _publish(self, *, force: bool = False) -> None:
        async with self._lock:  # one push at a time, each with the statuses of its moment
            statuses = self.statuses()
            if statuses == self._published and not force:
                return
            for name, serving in statuses.items():
                if self._published is not None and self._published.get(name) != serving:
                    if serving:
                        log.info("network %s: SERVING", name)
                    else:
                        log.warning(
                            "network %s: NOT_SERVING (no read has succeeded within its"
                            " max_stale_seconds)",
                            name,
                        )
            self._published = statuses
            for listener in self._listeners:
                try:
                    await listener.networks_changed(statuses)
                except Exception:  # a health report must never fail a read
                    log.exception("a network status listener failed")


class _ObservedSource:
    """A ``SnapshotSource`` that tells ``NetworkHealth`` how each read went."""

    def __init__(self, health: NetworkHealth, network: str, source: SnapshotSource) -> None:
        self._health = health
        self._network = network
        self._source = source

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        read = self._source.snapshot(
            addresses, with_prices=with_prices, timeout=timeout, block_number=block_number
        )
        return await self._health.observe(self._network, read, budget=timeout)

    async def head_number(self) -> int:
        return await self._health.observe(self._network, self._source.head_number())

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        return await self._health.observe(self._network, self._source.block_header(tag_or_number))
