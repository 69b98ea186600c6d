"""Provider cross-check: a snapshot is served only when other providers vouch for its block.

With ``verify_providers = N`` (N >= 2) on a network, after a snapshot is read
from provider P at block B, the hash of block B is read from P and from N-1
other providers (``eth_getBlockByNumber``).  The snapshot is served only when
all N agree.  A provider that does not have block B yet (it is a block or two
behind) cannot vouch and the next one is asked; a provider that cannot be
reached is the pool's usual fault.

On disagreement the check is counted (``ProviderPool.disagreements``) and
logged; a provider outvoted by a strict majority is demoted (it rests like a
faulty one).  Without a strict majority (two providers that disagree) the
remaining providers, if any, are asked too to break the tie.  If P is in the
majority its snapshot is served; if P is outvoted, or there is still no strict
majority, it is not: P's read moves on to the next provider, and with none left
the read is ``UNAVAILABLE`` naming the network ("providers disagree at block
B").  P is only rested when outvoted: when two providers disagree and no third
can say which is wrong, neither is rested.

Hashes are kept per (provider, block) for ``HASH_TTL_SECONDS``, so snapshots
at the same block do not re-read them; a disagreement is always decided on
hashes read afresh (a cached one may predate a reorg).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from service.chain.providers import Endpoint, ProviderFault, ProviderPool, RpcError
from service.errors import ChainUnavailable

__all__ = ["HASH_TTL_SECONDS", "CrossCheck", "HashReader", "majority"]

log = logging.getLogger(__name__)

HASH_TTL_SECONDS = 2.0
_MAX_CACHED = 1024

# Reads the hash of a block from one provider: None when that provider lacks the
# block; a ProviderFault when its answer is malformed.
HashReader = Callable[[Endpoint, int], Awaitable[str | None]]


def majority(hashes: Mapping[int, str]) -> tuple[str | None, frozenset[int]]:
    """The hash more than half of the providers report (None if none does) and the
    positions of the providers that report another one (empty without a majority)."""
    if not hashes:
        return None, frozenset()
    winner, votes = Counter(hashes.values()).most_common(1)[0]
    if 2 * votes <= len(hashes):
        return None, frozenset()
    return winner, frozenset(p for p, h in hashes.items() if h != winner)


class CrossCheck:
    """The cross-check of one network's snapshots (see the module text)."""

    def __init__(
        self,
        pool: ProviderPool,
        providers: int,
        read_hash: HashReader,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if providers < 2:
            raise ValueError("a cross-check needs at least two providers")
        self._pool = pool
        self._providers = providers
        self._read_hash = read_hash
        self._clock = clock
        self._hashes: dict[tuple[int, int], tuple[str, float]] = {}  # (position, block)

    async def verify(self, endpoint: Endpoint, block: int, *, timeout: float) -> None:
        """Return when ``providers`` providers, ``endpoint``'s among them, agree on the hash
        of ``block`` (or, when they disagree, ``endpoint``'s provider is in a strict
        majority); otherwise raise ``ProviderFault`` (``rest=False`` unless
        ``endpoint``'s provider was outvoted)."""
        want = self._providers - 1  # hashes from providers other than ``endpoint``'s
        known = self._from_cache(endpoint.position, block)
        hashes = await self._collect(endpoint, block, timeout, want=want, known=known)
        if known and len(set(hashes.values())) > 1:
            # A cached hash may predate a reorg: decide on fresh ones.
            hashes = await self._collect(endpoint, block, timeout, want=want, known={})
        if len(set(hashes.values())) > 1 and majority(hashes)[0] is None:
            # A tie (two providers that disagree, say): the others break it, if any.
            everyone = len(self._pool) - 1
            hashes = await self._collect(endpoint, block, timeout, want=everyone, known=hashes)
        if len(set(hashes.values())) > 1:
            self._disagree(endpoint.position, block, hashes)
        elif len(hashes) < self._providers:
            raise ProviderFault(
                f"block {block} could not be cross-checked "
                f"({len(hashes)} of {self._providers} providers answered)",
                rest=False,
            )

    def _disagree(self, own: int, block: int, hashes: Mapping[int, str]) -> None:
        self._pool.disagreements += 1
        winner, outvoted = majority(hashes)
        log.warning(
            "network %s: providers disagree at block %d (%s)%s",
            self._pool.network,
            block,
            ", ".join(f"provider {p + 1}: {h[:12]}…" for p, h in sorted(hashes.items())),
            f"; outvoted: {', '.join(f'provider {p + 1}' for p in sorted(outvoted))}"
            if outvoted
            else "; no majority",
        )
        for position in outvoted:
            self._forget(position, block)
            if position != own:
                self._pool.demote(position, f"block {block} hash outvoted by the other providers")
        if own in outvoted:
            raise ProviderFault(f"block {block} hash outvoted by the other providers")
        if winner is None:
            raise ProviderFault(f"providers disagree at block {block}", rest=False)

    def _from_cache(self, own: int, block: int) -> dict[int, str]:
        """Cached hashes of ``block``: ``own``'s and up to ``providers - 1`` others'."""
        hashes: dict[int, str] = {}
        others = 0
        for position in (own, *(p for p in range(len(self._pool)) if p != own)):
            if others == self._providers - 1:
                break
            if (block_hash := self._cached(position, block)) is not None:
                hashes[position] = block_hash
                others += position != own
        return hashes

    async def _collect(
        self,
        endpoint: Endpoint,
        block: int,
        timeout: float,
        *,
        want: int,
        known: Mapping[int, str],
    ) -> dict[int, str]:
        """``known`` hashes of ``block`` completed with ``endpoint``'s own and with others'
        until ``want`` other providers gave one (fewer when not enough can vouch)."""
        own = endpoint.position
        hashes = dict(known)
        others = sum(position != own for position in hashes)
        own_task = None if own in hashes else asyncio.ensure_future(self._own(endpoint, block))
        try:
            tried = {own, *hashes}
            while others < want:
                answered = await self._other(block, timeout, tried)
                if answered is None:
                    break  # no other provider left to ask
                position, block_hash = answered
                tried.add(position)
                if block_hash is not None:  # None: it lacks the block, so cannot vouch
                    hashes[position] = self._remember(position, block, block_hash)
                    others += 1
            if own_task is not None:
                hashes[own] = await own_task
        finally:
            if own_task is not None and not own_task.done():
                own_task.cancel()
            if own_task is not None:
                await asyncio.gather(own_task, return_exceptions=True)
        return hashes

    async def _own(self, endpoint: Endpoint, block: int) -> str:
        block_hash = await self._read_hash(endpoint, block)
        if block_hash is None:
            raise ProviderFault(f"block {block}, just read, is not available")
        return self._remember(endpoint.position, block, block_hash)

    async def _other(
        self, block: int, timeout: float, tried: set[int]
    ) -> tuple[int, str | None] | None:
        """(position, hash or None if it lacks the block) from the best provider not yet
        tried; None when none of them answers."""

        async def read(endpoint: Endpoint) -> tuple[int, str | None]:
            return endpoint.position, await self._read_hash(endpoint, block)

        try:
            return await self._pool.run(read, timeout=timeout, exclude=frozenset(tried))
        except (ChainUnavailable, RpcError):
            return None

    def _cached(self, position: int, block: int) -> str | None:
        entry = self._hashes.get((position, block))
        if entry is None or self._clock() - entry[1] > HASH_TTL_SECONDS:
            return None
        return entry[0]

    def _remember(self, position: int, block: int, block_hash: str) -> str:
        now = self._clock()
        if len(self._hashes) >= _MAX_CACHED:
            self._hashes = {
                key: entry
                for key, entry in self._hashes.items()
                if now - entry[1] <= HASH_TTL_SECONDS
            }
            if len(self._hashes) >= _MAX_CACHED:
                self._hashes.clear()
        self._hashes[(position, block)] = (block_hash, now)
        return block_hash

    def _forget(self, position: int, block: int) -> None:
        self._hashes.pop((position, block), None)
