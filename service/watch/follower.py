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
- Reorgs: the hash of the last processed block is kept, and so are the blocks whose
  changes were announced within the last ``REORG_DEPTH`` blocks (``announced``, saved
  with the state).  A next block whose parentHash differs, the same height with
  another hash, or a gap while announcements are that recent, makes the follower
  ask the node for the announced blocks' hashes, newest first, until one is still
  canonical.  The (address, currency) pairs announced in replaced blocks are
  corrections: the new block is read and compared with the last announced state as
  always, and the changes of those pairs carry ``reorg`` (the network's reorg count),
  so listeners announce them as such (``reorged: true``: the previous value is the
  announced one being replaced).  A pair whose canonical value is the announced one
  needs no correction.  Every listener thus ends at the canonical balance however deep
  the reorg; the depth bounds only which changes are marked as corrections.  A chain
  that went back below the last block read (the new branch shorter so far) is read
  once it passes that height again.
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
  never a differently split net change.  The marker holds the values announced;
  if a reorg replaced that block before the restart, those values are taken as
  announced and corrected at the next block like any other replaced announcement.
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
from service.domain import (
    AnnouncedBlock,
    BalanceChange,
    BlockRef,
    FollowerState,
    ReadDepth,
    Snapshot,
    Token,
)
from service.errors import BalancesError
from service.ports import (
    BaselineListener,
    ChangeListener,
    FollowerStateStore,
    SnapshotSource,
    WatchedSource,
)
from service.watch.diff import compare

__all__ = ["REORG_DEPTH", "BlockFollower"]

log = logging.getLogger(__name__)

# How far below the last block read an announcement is remembered: a reorg replacing an
# announced block up to this many blocks below the read depth (so ``confirmations + 64``
# below the head) is recognised and its corrections marked.  Far more than Ethereum's or
# Polygon's reorgs since their proof-of-stake upgrades; a deeper one still converges (the
# comparison is with the last announced state), only unmarked.
REORG_DEPTH = 64


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
        self._announced: tuple[AnnouncedBlock, ...] = ()  # oldest first
        self._reorgs = 0  # reorgs corrected so far (saved): part of correction ids
        # Pairs announced at an in-flight block a reorg replaced while no process
        # followed (see _restore): corrected at the next block.
        self._replaced: set[tuple[str, str]] = set()
        self._failing = False
        self._loop = BackgroundLoop(f"follower-{network}", self._loop_step, poll_interval)
        self.snapshots_read = 0  # for tests and metrics
        self.blocks_processed = 0  # blocks committed, and the changes found in them (metrics)
        self.changes_found = 0
        self.corrections_found = 0  # changes marked as reorg corrections

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
            self._forget()
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

    def _forget(self) -> None:
        """Start over: the next read of each address is a baseline."""
        self._state, self._last, self._in_flight = {}, None, None
        self._announced, self._replaced = (), set()

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
                self._announced, self._reorgs = saved.announced, saved.reorgs
                log.info(
                    "network %s: resuming from block %d (%d addresses)",
                    self.network, saved.block.number, len(saved.balances),
                )  # fmt: skip
                marker = await self._store.load_follower_state(_in_flight_key(self.network))
                if marker is not None and saved.block.number < marker.block.number:
                    # A process died after its listeners heard of this block and before it
                    # was saved: the same read gives the same changes (the same webhook ids),
                    # unless a reorg replaced the block since.
                    flight = marker.block
                    if (
                        flight.number <= head
                        and (await self._chain.block_header(flight.number)).hash == flight.hash
                    ):
                        self._in_flight = BlockRef(
                            self.network, flight.number, flight.hash, flight.timestamp
                        )
                    else:
                        self._take_replaced_flight(marker.balances)
        self._restored = True

    def _take_replaced_flight(self, announced: dict[str, dict[str, int]]) -> None:
        """The values of a replaced in-flight block may have been announced: taken as
        the last announced state, and corrected at the next block."""
        for address, amounts in announced.items():
            held = self._state.get(address)
            if held is not None:
                held.update(amounts)
                self._replaced.update((address, currency) for currency in amounts)
        if self._replaced:
            log.warning(
                "network %s: reorg: in-flight block was replaced while no process followed;"
                " its announcements will be corrected",
                self.network,
            )

    async def _step(self) -> BlockRef | None:
        if not self._restored:
            await self._restore()
        addresses = await self._watched()
        if not addresses:  # nobody is watching: no upstream call at all
            self._forget()
            return None
        if self._in_flight is not None:  # as first read: look for a reorg the same way
            block, suspect = self._in_flight, True
        else:
            target = await self._target()
            if target is None:
                return None
            block, suspect = target
        orphaned = await self._orphaned(block) if suspect and self._announced else ()
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
        changes, reorgs = self._mark_corrections(block, changes, orphaned)
        if changes and self._store is not None and self._in_flight is None:
            # Marked before any listener acts: whoever restores this state reads this
            # very block again, so the net change is never split differently; it holds
            # the values announced, in case a reorg replaces the block before that.
            key = _in_flight_key(self.network)
            marker = BlockRef(key, block.number, block.hash, block.timestamp)
            announcing: dict[str, dict[str, int]] = {}
            for change in changes:
                announcing.setdefault(change.address, {})[change.currency] = change.current
            await self._store.save_follower_state(FollowerState(marker, announcing))
        self._in_flight = block if changes else None
        if not await self._notify(block, changes, fresh, snapshot):
            return None  # not committed: the next tick tries this block again
        state = {a: dict(snapshot.balances[a]) for a in snapshot.balances}
        announced = self._announcements(block, changes, orphaned)
        if self._store is not None:
            # Saved before it counts as read: a crash now re-reads this block after a
            # restart, and the listeners are idempotent for it.
            await self._store.save_follower_state(FollowerState(block, state, announced, reorgs))
        self._state = state
        self._announced, self._reorgs, self._replaced = announced, reorgs, set()
        self.blocks_processed += 1
        self.changes_found += len(changes)
        self.corrections_found += sum(1 for c in changes if c.reorg)
        self._last = block
        self._in_flight = None
        return block

    async def _orphaned(self, block: BlockRef) -> list[AnnouncedBlock]:
        """The announced blocks a reorg replaced, newest first: asked of the node until
        one is still canonical (its ancestors are then too)."""
        gone: list[AnnouncedBlock] = []
        for entry in reversed(self._announced):
            if entry.number == block.number:
                canonical = entry.hash == block.hash
            elif entry.number < block.number:
                canonical = (await self._chain.block_header(entry.number)).hash == entry.hash
            else:  # above the block to read (not reached by the target rules): replaced
                canonical = False
            if canonical:
                break
            gone.append(entry)
        if gone:
            log.warning(
                "network %s: reorg: announced blocks %s were replaced; their changes are"
                " corrected at block %d",
                self.network,
                ", ".join(str(e.number) for e in reversed(gone)),
                block.number,
            )
        return gone

    def _mark_corrections(
        self, block: BlockRef, changes: list[BalanceChange], orphaned: Sequence[AnnouncedBlock]
    ) -> tuple[list[BalanceChange], int]:
        """``changes`` with those correcting a replaced announcement marked; the reorg count."""
        replaced = set(self._replaced)
        for entry in orphaned:
            replaced |= entry.keys
        if not replaced or not any((c.address, c.currency) in replaced for c in changes):
            return changes, self._reorgs
        reorgs = self._reorgs + 1
        marked = [
            c._replace(reorg=reorgs) if (c.address, c.currency) in replaced else c for c in changes
        ]
        corrections = sum(1 for c in marked if c.reorg)
        log.warning(
            "network %s: block %d: %d announced balances corrected after a reorg",
            self.network,
            block.number,
            corrections,
        )
        return marked, reorgs

    def _announcements(
        self, block: BlockRef, changes: Sequence[BalanceChange], orphaned: Sequence[AnnouncedBlock]
    ) -> tuple[AnnouncedBlock, ...]:
        """The announced blocks to remember after ``block``: the replaced ones and those
        more than ``REORG_DEPTH`` blocks below it dropped, ``block`` added if it announced."""
        gone = {(e.number, e.hash) for e in orphaned}
        kept = [
            e
            for e in self._announced
            if (e.number, e.hash) not in gone and e.number > block.number - REORG_DEPTH
        ]
        if changes:
            keys = frozenset((c.address, c.currency) for c in changes)
            kept.append(AnnouncedBlock(block.number, block.hash, keys))
        return tuple(kept)

    async def _target(self) -> tuple[BlockRef, bool] | None:
        """The block at the read depth when it is new (or replaced by a reorg), else None;
        with whether a reorg may have replaced announced blocks (then they are checked)."""
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
            return block, False
        if block.number < last.number or (block.number == last.number and block.hash == last.hash):
            return None
        suspect = True
        if block.number == last.number:
            log.warning(
                "network %s: reorg: block %d replaced (was %s, now %s); changes are relative"
                " to the last announced state",
                self.network,
                block.number,
                last.hash,
                block.hash,
            )
        elif block.number == last.number + 1:
            suspect = header.parent_hash != last.hash
            if suspect:
                log.warning(
                    "network %s: reorg below block %d: its parent is %s, block %d read was %s;"
                    " changes are relative to the last announced state",
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
            # Whether a reorg hid in the gap: worth one header only when there is
            # something to correct.
            suspect = bool(self._announced)
        return block, suspect

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
