"""Which block a past-balance query reads: a block number checked, or a time resolved.

A time resolves to the last block whose timestamp is at or before it, on each
network separately, by binary search over block timestamps (``block_header`` of
the network's ``SnapshotSource``).  Timestamps only ever grow along a chain
(equal ones happen: the search answers the last of them).

What can no longer change is remembered, in bounded LRU maps: a block's
timestamp once the block is deeper than the confirmation depth, and a time's
block once the block *after* it is that deep (no block can still appear at or
before the time).  So asking the same time again costs nothing upstream, and
searches for nearby times share their first steps.

Refused, as ``InvalidArgument`` on the request's field: a block after the head;
a time after both the clock and the newest block (a block at or before it may
still come); a time before the first block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from service.errors import InvalidArgument
from service.ports import Clock, SnapshotSource, utc_now

__all__ = ["AT_BLOCK", "AT_TIME", "AsOf", "BlockTimes", "PastBlock"]

AT_BLOCK, AT_TIME = "at_block", "at_time"  # the request fields, as errors name them
DEFAULT_ENTRIES = 100_000  # per map; about 200 bytes an entry


@dataclass(frozen=True)
class AsOf:
    """A past point a query reads at: a block number, or a time (exactly one)."""

    block: int | None = None
    time: datetime | None = None  # aware

    def __post_init__(self) -> None:
        if (self.block is None) == (self.time is None):
            raise ValueError("exactly one of block and time")


@dataclass(frozen=True)
class PastBlock:
    """The block a query reads, and the head then (None: not looked up, the block
    being known to be final already)."""

    number: int
    head: int | None


class BlockTimes:
    """Resolves ``AsOf`` to a block per network; remembers what is final."""

    def __init__(
        self,
        confirmations: Mapping[str, int],
        *,
        clock: Clock = utc_now,
        max_entries: int = DEFAULT_ENTRIES,
    ) -> None:
        self._confirmations = dict(confirmations)
        self._clock = clock
        self._max_entries = max_entries
        self._timestamps: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._blocks: OrderedDict[tuple[str, int], int] = OrderedDict()  # (network, time)
        self.headers_read = 0  # block headers asked for (tests, scripts)

    def final_below(self, network: str, head: int) -> int:
        """The newest block that can no longer change, given ``head`` (-1: none)."""
        depth = self._confirmations.get(network)
        return -1 if depth is None else head - depth

    async def head(self, network: str, source: SnapshotSource, number: int) -> int:
        """The head, checking that block ``number`` is not after it."""
        head = await source.head_number()
        if number > head:
            raise InvalidArgument(
                f"at_block {number} is after the newest block of network {network} ({head})",
                field=AT_BLOCK,
            )
        return head

    async def block_at(self, network: str, source: SnapshotSource, when: datetime) -> PastBlock:
        """The last block at or before ``when``; ``head`` None when remembered (final)."""
        # A block's timestamp is whole seconds: "at or before t" is "at or before floor(t)".
        seconds = int(when.timestamp() // 1)
        known = self._blocks.get((network, seconds))
        if known is not None:
            self._blocks.move_to_end((network, seconds))
            return PastBlock(known, None)
        latest = await source.block_header("latest")
        self.headers_read += 1
        head, final = latest.number, self.final_below(network, latest.number)
        if seconds >= latest.timestamp:
            if seconds > latest.timestamp and when > self._clock():
                raise InvalidArgument(
                    f"at_time {when.isoformat()} is in the future "
                    f"(the newest block of network {network} is {head})",
                    field=AT_TIME,
                )
            return PastBlock(head, head)  # no later block can be at or before it
        if seconds < await self._timestamp(network, source, 0, final):
            raise InvalidArgument(
                f"at_time {when.isoformat()} is before the first block of network {network}",
                field=AT_TIME,
            )
        low, high = 0, head  # timestamp(low) <= seconds < timestamp(high)
        while high - low > 1:
            middle = (low + high) // 2
            if await self._timestamp(network, source, middle, final) <= seconds:
                low = middle
            else:
                high = middle
        if high <= final:
            self._remember(self._blocks, (network, seconds), low)
        return PastBlock(low, head)

    async def _timestamp(
        self, network: str, source: SnapshotSource, number: int, final: int
    ) -> int:
        key = (network, number)
        known = self._timestamps.get(key)
        if known is not None:
            self._timestamps.move_to_end(key)
            return known
        header = await source.block_header(number)
        self.headers_read += 1
        if number <= final:
            self._remember(self._timestamps, key, header.timestamp)
        return header.timestamp

    def _remember(
        self, entries: OrderedDict[tuple[str, int], int], key: tuple[str, int], value: int
    ) -> None:
        entries[key] = value
        entries.move_to_end(key)
        while len(entries) > self._max_entries:
            entries.popitem(last=False)
