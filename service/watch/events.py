"""What the block followers produce and who consumes it.  Plain values, no I/O.

A follower reads the watched addresses of one network at each new block (at
the network's confirmation depth) and compares with the previous read.  Every
difference in a raw amount is a ``BalanceChange``; the listeners (watch
streams, webhook outbox, the balance cache) get all changes of one block at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.domain import Snapshot

__all__ = [
    "BalanceChange",
    "BlockRef",
    "ChangeListener",
    "FollowerState",
    "FollowerStateStore",
    "WatchedSource",
]


@dataclass(frozen=True)
class BlockRef:
    """The block a snapshot was read at."""

    network: str
    number: int
    hash: str  # 0x-prefixed
    timestamp: int


@dataclass(frozen=True)
class BalanceChange:
    """One currency of one address changed between two reads (raw on-chain integers)."""

    network: str
    address: str
    symbol: str
    decimals: int
    previous: int
    current: int


class ChangeListener(Protocol):
    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        """Called once per block that changed something; ``snapshot`` is the full read."""
        ...


class WatchedSource(Protocol):
    async def watched_addresses(self, network: str) -> set[str]:
        """Checksummed addresses on ``network`` someone wants followed right now."""
        ...


@dataclass(frozen=True)
class FollowerState:
    """What a follower last read: the block and every watched address's raw amounts."""

    block: BlockRef
    balances: dict[str, dict[str, int]]


class FollowerStateStore(Protocol):
    """Where followers keep their last read across restarts."""

    async def load_follower_state(self, network: str) -> FollowerState | None: ...

    async def save_follower_state(self, state: FollowerState) -> None: ...
