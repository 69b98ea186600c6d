"""A network's ``SnapshotSource`` with its snapshot reads counted, sized and timed.

Wraps the chain reader (``service.wiring``), under the network-health observer:
every upstream snapshot read, by the queries or the follower, is one
``balances_snapshot_reads_total``; divided into the cache lookups it gives the
calls each snapshot served, into the upstream requests the requests per snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from service import metrics
from service.domain import BlockHeader, Snapshot
from service.ports import SnapshotSource

__all__ = ["MeasuredSource"]


class MeasuredSource:
    """``source`` (one network's), its snapshot reads observed on pre-bound series."""

    def __init__(self, network: str, source: SnapshotSource) -> None:
        self._source = source
        self._ok = metrics.SNAPSHOT_READS.labels(network, "ok")
        self._failed = metrics.SNAPSHOT_READS.labels(network, "failed")
        self._addresses = metrics.SNAPSHOT_ADDRESSES.labels(network)
        self._seconds = metrics.SNAPSHOT_SECONDS.labels(network)

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        started = time.perf_counter()
        try:
            snapshot = await self._source.snapshot(
                addresses, with_prices=with_prices, timeout=timeout, block_number=block_number
            )
        except asyncio.CancelledError:
            raise  # the caller gave up: not the read's outcome
        except BaseException:
            self._failed.inc()
            raise
        self._ok.inc()
        self._addresses.observe(len(addresses))
        self._seconds.observe(time.perf_counter() - started)
        return snapshot

    async def head_number(self) -> int:
        return await self._source.head_number()

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        return await self._source.block_header(tag_or_number)
