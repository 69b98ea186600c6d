"""The first message of new watch streams: their reads batched into one fresh read per network.

A watch stream opens with the current balances of its wallet (or of its
customer's wallets).  Read one stream at a time, a thousand streams opened
together (clients reconnecting after a deploy) cost a thousand upstream reads.
Here every stream of a network that misses its tenant's cache joins the
network's open batch, and the batch is read as ONE snapshot of all its
addresses at one block (``SnapshotSource.snapshot``, split into ``aggregate3``
calls as any read is) when the first of these comes:

- nobody joined for ``quiet`` seconds, unless the network is in a storm: a
  lone stream, or a few, wait 5 ms more than they used to;
- ``max_wait`` seconds passed since the batch opened: no stream waits longer.
  In a storm (``crowd`` streams joined the network within the last
  ``max_wait``: clients reconnecting after a deploy) this is the only rule, so
  the server's own pauses between arrivals do not split batches, and a storm
  costs one read per ``max_wait`` however long it lasts;
- the batch holds ``max_addresses`` addresses (a read stays a bounded size).

A stream joining while a batch is being read goes into the next batch, never
into the read under way, and the next batch is not read before that read
ended (one batch read per network at a time: it gathers the streams arriving
meanwhile); prices are read when any member asked for them.

Tenant blindness (SECURITY.md, threat 4: a tenant must not learn whether
another reads or follows an address).  A batch mixes tenants' addresses, and
that is safe because:

- It is a fresh upstream read, started after each of its members joined;
  nothing in it was read or cached before any member asked.  So the block of a
  stream's first message is never older than a read of its own, made when it
  joined, would have been, and no answer comes out of another tenant's cache.
- Each member is given only its own addresses, and its tenant's cache gets
  exactly what a read of its own would have put there (``BalanceQueries``
  keeps its per-tenant keys; this class never touches a cache).
- Who is in a batch depends on when streams opened, not on what they watch: a
  tenant watching an address that others also watch waits and pays the same
  as one watching an address nobody else does.  What the wait can tell is that
  other streams opened on the same network within the same few milliseconds
  (it then grows towards ``max_wait``), which the server's load tells as well.

A stream whose tenant has the read cached is answered from that cache first
(``BalanceQueries``), as any query of that tenant is.

The block follower of the network adopts these reads as its baseline
(``BlockFollower.adopt_from``): the streams' addresses were just read at the
block it is about to read, so it takes them from the newest block's batches
(``read_at``) instead of reading them again.  An address whose batch is still
being read is not the follower's yet: the hub names a stream's addresses once
it has its first message.  Only raw amounts at a block pass to it, never a tenant.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service.domain import Snapshot
from service.errors import ChainUnavailable
from service.ports import SnapshotSource

__all__ = ["CROWD", "MAX_ADDRESSES", "MAX_WAIT_SECONDS", "QUIET_SECONDS", "InitialReads"]

QUIET_SECONDS = 0.005
MAX_WAIT_SECONDS = 0.5
CROWD = 8  # streams joining within MAX_WAIT_SECONDS that make a storm
MAX_ADDRESSES = 5_000  # 15,000 balance reads with three tokens: 30 aggregate3 calls of 500


@dataclass(eq=False)
class _Batch:
    result: asyncio.Future[Snapshot]
    opened: float  # the loop's clock
    joined: float  # when the last member joined
    addresses: set[str] = field(default_factory=set)
    with_prices: bool = False
    timer: asyncio.TimerHandle | None = None


class InitialReads:
    """``read`` is a ``service.balances.SharedRead``: one open batch per network at a time."""

    def __init__(
        self,
        sources: Mapping[str, SnapshotSource],
        *,
        read_timeout: float,
        quiet: float = QUIET_SECONDS,
        max_wait: float = MAX_WAIT_SECONDS,
        crowd: int = CROWD,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._sources = sources
        self._read_timeout = read_timeout
        self._quiet = quiet
        self._max_wait = max_wait
        self._max_addresses = max_addresses
        self._open: dict[str, _Batch] = {}
        # The last ``crowd`` join times of each network: a storm when they span < max_wait.
        self._joins: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=crowd))
        self._reading: dict[str, set[asyncio.Task[None]]] = {}  # by network
        # The newest block's batches read, merged, per network: the follower's baseline.
        self._newest: dict[str, Snapshot] = {}
        self._closed = False
        self.reads = 0  # batches read (for tests and metrics)

    async def read(self, network: str, addresses: Sequence[str], with_prices: bool) -> Snapshot:
        """A snapshot holding ``addresses`` (and the feeds, ``with_prices``), read with the
        batch they join; raises what the read raised (``ChainUnavailable``...)."""
        if network not in self._sources:
            raise ChainUnavailable(network, "this network is not configured on the server")
        if self._closed:
            raise ChainUnavailable(network, "the server is shutting down")
        loop = asyncio.get_running_loop()
        now = loop.time()
        batch = self._open.get(network)
        if batch is None:
            batch = self._open[network] = _Batch(loop.create_future(), opened=now, joined=now)
            batch.result.add_done_callback(_retrieved)
            batch.timer = loop.call_at(now + self._quiet, self._due, network, batch)
        batch.addresses.update(addresses)
        batch.with_prices |= with_prices
        batch.joined = now
        self._joins[network].append(now)
        if len(batch.addresses) >= self._max_addresses:
            self._start(network, batch)
        # shield: one member going away must not cancel the read of the others.
        return await asyncio.shield(batch.result)

    async def aclose(self) -> None:
        """Fail the open batches, stop the reads under way; later reads fail at once."""
        self._closed = True
        self._newest.clear()
        for network, batch in list(self._open.items()):
            del self._open[network]
            if batch.timer is not None:
                batch.timer.cancel()
            batch.result.set_exception(ChainUnavailable(network, "the server is shutting down"))
        tasks = [task for tasks in self._reading.values() for task in tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def read_at(self, network: str, block_number: int) -> Snapshot | None:
        """The balances (no prices) the batches read at ``block_number``, if it is the
        newest block they were read at; None otherwise."""
        newest = self._newest.get(network)
        return newest if newest is not None and newest.block_number == block_number else None

    def _keep(self, snapshot: Snapshot) -> None:
        """Merge a batch read into its network's newest block's (an older block: dropped)."""
        newest = self._newest.get(snapshot.network)
        if newest is not None and newest.block_number > snapshot.block_number:
            return
        if newest is None or (newest.block_number, newest.block_timestamp) != (
            snapshot.block_number,
            snapshot.block_timestamp,  # the same number, another time: a reorg's block
        ):
            balances = dict(snapshot.balances)
            self._newest[snapshot.network] = Snapshot(
                snapshot.network, snapshot.block_number, snapshot.block_timestamp, balances, {}
            )
        else:
            newest.balances.update(snapshot.balances)

    def _due(self, network: str, batch: _Batch) -> None:
        """The batch's timer: read it now, or look again when it is due.  While the network
        has a batch being read, the next one waits for it (and gathers more members)."""
        batch.timer = None
        if self._reading.get(network):
            return  # looked at again when that read ends
        loop = asyncio.get_running_loop()
        due = batch.opened + self._max_wait
        if not self._storm(network, loop.time()):
            due = min(batch.joined + self._quiet, due)
        if loop.time() >= due:
            self._start(network, batch)
        else:
            batch.timer = loop.call_at(due, self._due, network, batch)

    def _storm(self, network: str, now: float) -> bool:
        joins = self._joins[network]
        return len(joins) == joins.maxlen and now - joins[0] < self._max_wait

    def _start(self, network: str, batch: _Batch) -> None:
        """Close the batch to newcomers and read it."""
        if self._open.get(network) is batch:
            del self._open[network]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        task = asyncio.create_task(self._read(batch, self._sources[network]))
        self._reading.setdefault(network, set()).add(task)
        task.add_done_callback(lambda done: self._read_ended(network, done))

    def _read_ended(self, network: str, task: asyncio.Task[None]) -> None:
        reading = self._reading.get(network, set())
        reading.discard(task)
        if not reading:
            self._reading.pop(network, None)
            waiting = self._open.get(network)
            if waiting is not None and waiting.timer is None and not self._closed:
                self._due(network, waiting)

    async def _read(self, batch: _Batch, source: SnapshotSource) -> None:
        self.reads += 1
        try:
            snapshot = await source.snapshot(
                sorted(batch.addresses), with_prices=batch.with_prices, timeout=self._read_timeout
            )
        except asyncio.CancelledError:
            batch.result.cancel()
            raise
        except Exception as exc:  # every member gets it: ChainUnavailable is theirs to map
            batch.result.set_exception(exc)
        else:
            self._keep(snapshot)
            batch.result.set_result(snapshot)


def _retrieved(result: asyncio.Future[Snapshot]) -> None:
    """Marks a failure as seen: when every member went away first, nobody else will."""
    if not result.cancelled():
        result.exception()
