"""The block follower of one network: one snapshot per new block, compared with the last one.

Every poll interval it asks for the block at the network's read depth (head
minus ``confirmations``, or the ``block_tag``'s block).  When that block is
new, it reads ONE snapshot (no prices) of every address any ``WatchedSource``
wants followed, at exactly that block, and compares it with the previous read
per (address, currency).  Differences go to every ``ChangeListener`` at once;
an address read for the first time is a baseline (no change; baseline
listeners are told, so a watch started from a stale cache learns the truth).

- Gaps: when the target jumped by more than one block (slow polling, a node
  that was down) the newest block is read once and the net change emitted
  once; the skipped range is logged, never silent.
- Reorgs: the hash of the last processed block is kept.  A next block whose
  parentHash differs, or the same height with another hash, is logged as a
  reorg; changes are still computed against the last emitted state.
- Nobody watching: no upstream call at all (the next watched read is a baseline).
- Adopted baselines (``adopt_from``, the watch streams' initial reads): an
  address not followed yet that a stream's initial read read at the very block
  to process (same number and timestamp) is taken from that read, not read
  again.  The hub names a stream's addresses only once it has its initial state,
  so subscribing N streams reads their addresses once, not twice.
- Restarts: with a ``FollowerStateStore`` the last read is saved after every
  processed block and restored at start, so the first block after a restart
  is compared with it and the net change of the downtime is emitted once.
  A block with changes is marked "in flight" in the store before any listener
  hears of it; a process that restores the state (a restart, or another
  replica taking the lead) reads that exact block first, so a crash between the
  listeners and the save yields the same changes again (the same webhook ids),
  never a differently split net change.
- Failures (node down, timeouts) are logged without URLs and retried on the
  next tick.  A listener that fails makes the whole block be retried (the
  state is only committed when every listener accepted it); listeners must
  therefore be idempotent per state, which the hub, the cache refresh and the
  webhook outbox (deduplicated per block hash) are.  The loop never dies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from service.background import BackgroundLoop
from service.domain import BalanceChange, BlockRef, FollowerState, ReadDepth, Snapshot, Token
from service.errors import BalancesError
from service.ports import (
    BaselineListener,
    ChangeListener,
    FollowerStateStore,
    SnapshotSource,
    WatchedSource,
)
from service.watch.diff import compare

__all__ = ["BlockFollower"]

log = logging.getLogger(__name__)


class FreshReads(Protocol):
    """Fresh reads made for others (``InitialReads``) that the follower may adopt."""

    def read_at(self, network: str, block_number: int) -> Snapshot | None:
        """Balances read at ``block_number`` (no prices), or None."""
        ...


def _in_flight_key(network: str) -> str:
    """Where the block in flight is marked in the state store (no network name has ``#``)."""
    return f"{network}#in-flight"


class BlockFollower:
    """Follows one network; ``start`` runs it in a task, ``aclose`` stops it."""

    def __init__(
        self,
        network: str,
        chain: SnapshotSource,
        *,
        depth: ReadDepth,
        tokens: Sequence[Token],
        poll_interval: float,
        read_timeout: float,
        state_store: FollowerStateStore | None = None,
    ) -> None:
        self.network = network
        self._depth = depth
        self._decimals = {t.currency: t.decimals for t in tokens}
        self._store = state_store
        self._restored = state_store is None
        self._chain = chain
        self._read_timeout = read_timeout
        self._listeners: list[ChangeListener] = []
        self._baseline_listeners: list[BaselineListener] = []
        self._sources: list[WatchedSource] = []
        self._fresh_reads: FreshReads | None = None
        self._state: dict[str, dict[str, int]] = {}
        self._last: BlockRef | None = None
        # A block whose changes some listener may have acted on but that was not
        # committed: read again, exactly, before any newer block (see _restore).
        self._in_flight: BlockRef | None = None
        self._failing = False
        self._loop = BackgroundLoop(f"follower-{network}", self._loop_step, poll_interval)
        self.snapshots_read = 0  # for tests and metrics
        self.blocks_processed = 0  # blocks committed, and the changes found in them (metrics)
        self.changes_found = 0

    # --- wiring -------------------------------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        """Called with each block's changes, in the order listeners were added."""
        self._listeners.append(listener)

    def add_baseline_listener(self, listener: BaselineListener) -> None:
        self._baseline_listeners.append(listener)

    def add_source(self, source: WatchedSource) -> None:
        """Its ``watched_addresses`` are asked at every new block; the union is read."""
        self._sources.append(source)

    def adopt_from(self, reads: FreshReads) -> None:
        """Take addresses not followed yet from ``reads`` when read at the block processed."""
        self._fresh_reads = reads

    @property
    def last_block(self) -> BlockRef | None:
        return self._last

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Tick every poll interval (and on ``wake``) in a task; idempotent.

        A start after ``aclose`` (leadership regained) reloads the saved state:
        another process may have followed the network in between."""
        if not self._loop.running and self._store is not None:
            self._restored = False
            self._state, self._last, self._in_flight = {}, None, None
        self._loop.start()

    async def aclose(self) -> None:
        """Stop ticking; idempotent."""
        await self._loop.aclose()

    def wake(self) -> None:
        """Tick now instead of at the end of the poll interval."""
        self._loop.wake()

    async def _loop_step(self) -> None:
        await self.tick()

    # --- one step -----------------------------------------------------------------------

    async def tick(self) -> BlockRef | None:
        """Process the target block if it is new; the block processed, else None.  Never raises."""
        try:
            processed = await self._step()
        except BalancesError as exc:  # messages name the network, never a URL
            self._failed(str(exc))
            return None
        except Exception as exc:  # a bug, or a node answering nonsense: logged, retried
            self._failed(f"unexpected {type(exc).__name__}", exc_info=True)
            return None
        if self._failing and processed is not None:
            self._failing = False
            log.info(
                "network %s: follower reading again at block %d",
                self.network,
                processed.number,
            )
        return processed

    def _failed(self, reason: str, *, exc_info: bool = False) -> None:
        """Logged at WARNING once per outage, then at DEBUG until a read succeeds."""
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(
            level,
            "network %s: follower read failed, retrying: %s",
            self.network,
            reason,
            exc_info=exc_info,
        )
        self._failing = True

    async def _restore(self) -> None:
        """Take up the saved read, unless the chain is behind it (then start over)."""
        assert self._store is not None
        saved = await self._store.load_follower_state(self.network)
        if saved is not None:
            head = await self._chain.head_number()
            if saved.block.number > head:
                log.warning(
                    "network %s: saved follower state is at block %d but the chain's head is %d;"
                    " starting over",
                    self.network, saved.block.number, head,
                )  # fmt: skip
            else:
                self._state, self._last = saved.balances, saved.block
                log.info(
                    "network %s: resuming from block %d (%d addresses)",
                    self.network, saved.block.number, len(saved.balances),
                )  # fmt: skip
                marker = await self._store.load_follower_state(_in_flight_key(self.network))
                if marker is not None and saved.block.number < marker.block.number <= head:
                    # A process died after its listeners heard of this block and before it
                    # was saved: the same read gives the same changes (the same webhook ids),
                    # unless a reorg replaced the block since.
                    flight = marker.block
                    if (await self._chain.block_header(flight.number)).hash == flight.hash:
                        self._in_flight = BlockRef(
                            self.network, flight.number, flight.hash, flight.timestamp
                        )
        self._restored = True

    async def _step(self) -> BlockRef | None:
        if not self._restored:
            await self._restore()
        addresses = await self._watched()
        if not addresses:  # nobody is watching: no upstream call at all
            self._state, self._last, self._in_flight = {}, None, None
            return None
        block = self._in_flight or await self._target()
        if block is None:
            return None
        adopted: dict[str, dict[str, int]] = {}
        if self._fresh_reads is not None:
            done = self._fresh_reads.read_at(self.network, block.number)
            if done is not None and done.block_timestamp == block.timestamp:
                got, state = done.balances, self._state
                adopted = {a: got[a] for a in addresses if a in got and a not in state}
        if len(adopted) == len(addresses):  # nothing left to read: no upstream call
            snapshot = Snapshot(self.network, block.number, block.timestamp, adopted, {})
        else:
            try:
                snapshot = await self._chain.snapshot(
                    sorted(addresses - adopted.keys() if adopted else addresses),
                    with_prices=False,
                    timeout=self._read_timeout,
                    block_number=block.number,
                )
            except Exception:
                self._in_flight = None  # e.g. pruned by now: read the newest block next time
                raise
            self.snapshots_read += 1
            if snapshot.block_number != block.number:  # cannot happen with a pinned read
                raise RuntimeError(f"asked for block {block.number}, read {snapshot.block_number}")
            if adopted:
                snapshot.balances.update(adopted)
        block = BlockRef(block.network, block.number, block.hash, snapshot.block_timestamp)
        changes, fresh = compare(self._state, snapshot, self._decimals)
        if changes and self._store is not None and self._in_flight is None:
            # Marked before any listener acts: whoever restores this state reads this
            # very block again, so the net change is never split differently.
            key = _in_flight_key(self.network)
            marker = BlockRef(key, block.number, block.hash, block.timestamp)
            await self._store.save_follower_state(FollowerState(marker, {}))
        self._in_flight = block if changes else None
        if not await self._notify(block, changes, fresh, snapshot):
            return None  # not committed: the next tick tries this block again
        state = {a: dict(snapshot.balances[a]) for a in snapshot.balances}
        if self._store is not None:
            # Saved before it counts as read: a crash now re-reads this block after a
            # restart, and the listeners are idempotent for it.
            await self._store.save_follower_state(FollowerState(block, state))
        self._state = state
        self.blocks_processed += 1
        self.changes_found += len(changes)
        self._last = block
        self._in_flight = None
        return block

    async def _target(self) -> BlockRef | None:
        """The block at the read depth when it is new (or replaced by a reorg), else None."""
        if self._depth.confirmations:
            head = await self._chain.head_number()
            number = max(head - self._depth.confirmations, 0)
            if self._last is not None and number < self._last.number:
                return None
            if self._last is not None and number == self._last.number:
                return None  # a same-height reorg below the depth is not looked for
            header = await self._chain.block_header(number)
        else:
            header = await self._chain.block_header(self._depth.block_tag)
        block = BlockRef(self.network, header.number, header.hash, header.timestamp)
        last = self._last
        if last is None:
            return block
        if block.number < last.number or (block.number == last.number and block.hash == last.hash):
            return None
        if block.number == last.number:
            log.warning(
                "network %s: reorg: block %d replaced (was %s, now %s); changes are relative"
                " to the last emitted state",
                self.network,
                block.number,
                last.hash,
                block.hash,
            )
        elif block.number == last.number + 1:
            if header.parent_hash != last.hash:
                log.warning(
                    "network %s: reorg below block %d: its parent is %s, block %d read was %s;"
                    " changes are relative to the last emitted state",
                    self.network,
                    block.number,
                    header.parent_hash,
                    last.number,
                    last.hash,
                )
        else:
            log.info(
                "network %s: blocks %d-%d not read one by one; reading block %d for the net change",
                self.network,
                last.number + 1,
                block.number - 1,
                block.number,
            )
        return block

    async def _watched(self) -> set[str]:
        addresses: set[str] = set()
        for source in self._sources:
            addresses |= await source.watched_addresses(self.network)
        return addresses

    async def _notify(
        self,
        block: BlockRef,
        changes: list[BalanceChange],
        fresh: list[str],
        snapshot: Snapshot,
    ) -> bool:
        ok = True
        if fresh:
            for baseline in self._baseline_listeners:
                ok &= await self._guarded(baseline.balances_baselined(block, fresh, snapshot))
        if changes:
            for listener in self._listeners:
                ok &= await self._guarded(listener.balances_changed(block, changes, snapshot))
        return ok

    async def _guarded(self, call: Any) -> bool:
        try:
            await call
        except Exception:
            log.exception("network %s: a balance listener failed; retrying", self.network)
            return False
        return True
