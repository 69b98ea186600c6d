"""The use cases: a wallet's balances and a customer's balances, cached and coalesced.

Snapshots are cached by (tenant, network, addresses, prices or not).  A wallet
query reads a snapshot of its one address; a customer query reads one snapshot
per network holding all of the customer's addresses there, so every wallet of a
customer on one network comes from the same block.  Concurrent misses for the
same key share one upstream read; failures are never cached.

The tenant is part of every key, and so of every coalesced read: a tenant can
never be served (or kept waiting on) a read another tenant caused, so neither
the block number of an answer nor its latency says whether someone else asked
for the same address.  The price is one upstream read per tenant asking, not
one per address (see SECURITY.md).

Stale-if-error: when a read fails with ``ChainUnavailable`` (every provider
failed), the last good snapshot *of the same key* (same tenant, same addresses)
is served instead, marked stale, if it was read at most the network's
``max_stale_seconds`` ago (0: never).  The last good snapshot of each key is
kept beyond the cache's TTL, in a bounded LRU (``last_good_entries`` keys per
process), and only ever replaced by one at the same or a higher block, so a
stale answer is never older than an answer already given for its key.  When a
caller has a deadline and a stale answer is at hand, the read gets a little
less than the caller's time (a tenth, at most 0.1 s) so that the fallback can
still be answered in time.

Shared reads: a caller may pass a ``SharedRead`` (the watch streams' initial
reads, ``service.watch.initial_reads``).  Everything above holds but the read
itself: on a miss of the tenant's own key, the key's snapshot is cut from the
shared read (a fresh upstream read made for a batch of callers) and cached for
the tenant as if it had read it alone.

Past balances (``as_of``: a block, or a time each network resolves to its own
block, ``service.block_times``): the snapshot of that block, read through the
same source, keyed by the block too (never the key of a "now" read), coalesced
alike, never served stale.  A block deeper than the network's confirmation
depth cannot change: its snapshot is cached as immutable (no TTL, still bounded
by the cache's size), so asking again costs no upstream call at all.  A block
not that deep yet is cached for the ordinary TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from service.block_times import AsOf, BlockTimes
from service.domain import (
    CustomerBalances,
    Snapshot,
    Token,
    TokenAmount,
    Wallet,
    WalletBalance,
    parse_customer_id,
    parse_wallet_id,
)
from service.errors import ChainUnavailable
from service.money import round_half_even, value_of
from service.ports import Clock, SnapshotCache, SnapshotSource, WalletReader, utc_now
from service.pricing import token_price

__all__ = ["AsOf", "BalanceQueries", "SharedRead"]

log = logging.getLogger(__name__)

_STALE_RESERVE = 0.1  # seconds of a caller's deadline kept for answering from the last good read
LAST_GOOD_ENTRIES = 10_000  # snapshots kept for stale-if-error, per process


# (network, addresses, with_prices) -> a fresh snapshot holding at least those addresses
# (and the price feeds when asked for them), read for several callers at once.
SharedRead = Callable[[str, Sequence[str], bool], Awaitable[Snapshot]]


@dataclass(frozen=True)
class _LastGood:
    snapshot: Snapshot
    read_at: float  # the clock's reading when it was read


class BalanceQueries:
    """Answers balance questions for one tenant at a time."""

    def __init__(
        self,
        directory: WalletReader,
        sources: Mapping[str, SnapshotSource],
        tokens: Mapping[str, tuple[Token, ...]],
        cache: SnapshotCache,
        *,
        base_currency: str,
        minor_unit_digits: int,
        read_timeout: float,
        max_stale: Mapping[str, float] | None = None,
        last_good_entries: int = LAST_GOOD_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        confirmations: Mapping[str, int] | None = None,
        now: Clock = utc_now,
    ) -> None:
        """``max_stale``: seconds per network a last good read may be served when every
        provider fails (a network not named, or 0: never); ``clock`` counts seconds.
        ``confirmations``: each network's depth below which blocks are final (a
        network not named: none is); ``now``: the time a past time must not be after."""
        self._directory = directory
        self._sources = sources
        self._tokens = tokens
        # Per network, (currency, decimals) in token order: what each wallet's amounts take.
        self._amounts_of = {
            n: tuple((t.currency, t.decimals) for t in ts) for n, ts in tokens.items()
        }
        self._cache = cache
        self._base_currency = base_currency
        self._minor_unit_digits = minor_unit_digits
        self._read_timeout = read_timeout
        self._inflight: dict[str, asyncio.Task[Snapshot]] = {}
        self._max_stale = dict(max_stale or {})
        self._last_good: OrderedDict[str, _LastGood] = OrderedDict()
        self._last_good_entries = last_good_entries
        self._clock = clock
        self.block_times = BlockTimes(confirmations or {}, clock=now)
        # (network, hit | miss | coalesced | stale) -> lookups; read by service.metrics_sampler.
        self.lookups: Counter[tuple[str, str]] = Counter()

    async def wallet_balance(
        self,
        tenant: str,
        wallet_id: str,
        timeout: float | None = None,
        *,
        as_of: AsOf | None = None,
    ) -> WalletBalance:
        """The wallet's balances now, or at ``as_of``'s block."""
        wallet = await self._directory.get_wallet(tenant, parse_wallet_id(wallet_id))
        if as_of is not None:
            snapshot = await self._past_snapshot(
                tenant, wallet.network, [wallet.address], False, timeout, as_of
            )
            return self._wallet_balance(wallet, snapshot)
        return await self.balance_of(tenant, wallet, timeout=timeout)

    async def balance_of(
        self,
        tenant: str,
        wallet: Wallet,
        *,
        timeout: float | None = None,
        shared: SharedRead | None = None,
    ) -> WalletBalance:
        """``wallet``'s (from ``tenant``'s directory) balances: the tenant's cached read, else
        a read of its own, or ``shared``'s."""
        snapshot, stale = await self._snapshot(
            tenant,
            wallet.network,
            [wallet.address],
            with_prices=False,
            timeout=timeout,
            shared=shared,
        )
        return self._wallet_balance(wallet, snapshot, stale=stale)

    async def customer_balances(
        self,
        tenant: str,
        customer_id: str,
        timeout: float | None = None,
        *,
        as_of: AsOf | None = None,
    ) -> CustomerBalances:
        """The customer's balances and total now, or at ``as_of``: each network at its
        own block (a time resolves per network), priced by the feeds at that block."""
        wallets = await self._directory.customer_wallets(tenant, parse_customer_id(customer_id))
        return await self.balances_of(tenant, customer_id, wallets, timeout=timeout, as_of=as_of)

    async def balances_of(
        self,
        tenant: str,
        customer_id: str,
        wallets: Sequence[Wallet],
        *,
        timeout: float | None = None,
        shared: SharedRead | None = None,
        as_of: AsOf | None = None,
    ) -> CustomerBalances:
        """The balances of ``wallets`` (the customer's, from the directory) and their total."""
        held_at: dict[str, set[str]] = {}  # network -> the customer's addresses there
        for w in wallets:
            held_at.setdefault(w.network, set()).add(w.address)
        networks = sorted(held_at)

        async def read(network: str) -> tuple[Snapshot, bool]:
            addresses = sorted(held_at[network])
            if as_of is not None:
                past = await self._past_snapshot(tenant, network, addresses, True, timeout, as_of)
                return past, False
            return await self._snapshot(
                tenant, network, addresses, with_prices=True, timeout=timeout, shared=shared
            )

        snapshots = await asyncio.gather(*(read(network) for network in networks))
        by_network = {n: snapshot for n, (snapshot, _) in zip(networks, snapshots, strict=True)}
        stale = {n for n, (_, is_stale) in zip(networks, snapshots, strict=True) if is_stale}
        values = []
        for network, snapshot in by_network.items():
            rows = [snapshot.balances[address] for address in held_at[network]]
            for token in self._tokens[network]:
                price = token_price(token, snapshot)
                currency = token.currency
                held = sum(row[currency] for row in rows)
                values.append(value_of(held, token.decimals, price))
        return CustomerBalances(
            customer_id=customer_id,
            total=round_half_even(values, self._minor_unit_digits),
            total_currency=self._base_currency,
            wallets=tuple(
                self._wallet_balance(w, by_network[w.network], stale=w.network in stale)
                for w in wallets
            ),
        )

    async def wallet_deleted(self, wallet: Wallet) -> None:
        """Drop the cached single-address snapshots of a wallet that was deleted.

        Multi-address (customer) snapshots need no dropping: a customer's
        address set changes with the deletion, and so does its cache key.
        """
        for with_prices in (False, True):
            key = _cache_key(wallet.tenant, wallet.network, [wallet.address], with_prices)
            await self._cache.delete(key)
            self._last_good.pop(key, None)

    async def remember_address(self, tenant: str, snapshot: Snapshot, address: str) -> None:
        """Cache ``address``'s balances, for ``tenant``, from a read the block follower made.

        Stored under the key a wallet query of that one address reads, so
        ``GetWalletBalance`` answers with exactly what a watch or webhook of
        ``tenant`` just announced, without an upstream call.  Only a tenant that
        follows the address itself is given the read (``CacheRefresh``).  A
        newer cached read is never replaced.
        """
        key = _cache_key(tenant, snapshot.network, [address], False)
        cached = await self._cache.get(key)
        if cached is not None and cached.block_number > snapshot.block_number:
            return
        single = Snapshot(
            snapshot.network,
            snapshot.block_number,
            snapshot.block_timestamp,
            {address: dict(snapshot.balances[address])},
            {},
        )
        await self._store(key, single)

    def wallet_balance_at(self, wallet: Wallet, snapshot: Snapshot) -> WalletBalance:
        """``wallet``'s balances as held in ``snapshot`` (which must include its address)."""
        return self._wallet_balance(wallet, snapshot)

    def _wallet_balance(
        self, wallet: Wallet, snapshot: Snapshot, *, stale: bool = False
    ) -> WalletBalance:
        held = snapshot.balances[wallet.address]
        return WalletBalance(
            wallet,
            tuple([TokenAmount(c, held[c], d) for c, d in self._amounts_of[wallet.network]]),
            snapshot.block_number,
            snapshot.block_timestamp,
            stale,
        )

    async def _snapshot(
        self,
        tenant: str,
        network: str,
        addresses: list[str],
        *,
        with_prices: bool,
        timeout: float | None,
        shared: SharedRead | None = None,
    ) -> tuple[Snapshot, bool]:
        """The key's snapshot and whether it is stale (the last good read, every provider
        having failed).  On a miss, ``shared`` (when given) reads instead of ``source``."""
        source = self._sources.get(network)
        if source is None:
            raise ChainUnavailable(network, "this network is not configured on the server")
        key = _cache_key(tenant, network, addresses, with_prices)
        task = self._inflight.get(key)
        if task is None:
            cached = await self._cache.get(key)
            if cached is not None:
                self.lookups[network, "hit"] += 1
                return cached, False
            task = self._inflight.get(key)  # another caller may have started it meanwhile
        if task is not None:
            self.lookups[network, "coalesced"] += 1
        else:
            self.lookups[network, "miss"] += 1
            budget = self._read_timeout if timeout is None else min(timeout, self._read_timeout)
            if timeout is not None and self._servable(network, key) is not None:
                budget = min(budget, timeout - min(_STALE_RESERVE, timeout / 10))
            read: Callable[[float], Awaitable[Snapshot]]
            if shared is None:

                def read(timeout: float) -> Awaitable[Snapshot]:
                    return source.snapshot(addresses, with_prices=with_prices, timeout=timeout)

            else:

                async def read(timeout: float) -> Snapshot:  # the shared read has its own
                    whole = await shared(network, addresses, with_prices)
                    return _part(whole, addresses, with_prices)

            task = asyncio.create_task(self._read_and_store(key, read, budget))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        try:
            # shield: one caller giving up (deadline, cancel) must not cancel the others' read.
            return await asyncio.shield(task), False
        except ChainUnavailable as exc:
            last = self._servable(network, key)
            if last is None:
                raise
            self.lookups[network, "stale"] += 1
            log.debug("serving the last good read of block %d: %s", last.block_number, exc)
            return last, True

    async def _past_snapshot(
        self,
        tenant: str,
        network: str,
        addresses: list[str],
        with_prices: bool,
        timeout: float | None,
        as_of: AsOf,
    ) -> Snapshot:
        """The addresses' snapshot at ``as_of``'s block on ``network``: cached (immutable
        once final), else read pinned to that block; concurrent misses coalesced."""
        source = self._sources.get(network)
        if source is None:
            raise ChainUnavailable(network, "this network is not configured on the server")
        head: int | None = None
        if as_of.block is not None:
            block, final = as_of.block, False
        else:
            assert as_of.time is not None
            past = await self.block_times.block_at(network, source, as_of.time)
            block, head = past.number, past.head
            final = head is None  # remembered: only final blocks are
        key = _hashed_key(tenant, network, addresses, with_prices, at_block=block)
        task = self._inflight.get(key)
        if task is None:
            cached = await self._cache.get(key)
            if cached is not None:
                self.lookups[network, "hit"] += 1
                return cached
            task = self._inflight.get(key)
        if task is not None:
            self.lookups[network, "coalesced"] += 1
            return await asyncio.shield(task)
        self.lookups[network, "miss"] += 1
        budget = self._read_timeout if timeout is None else min(timeout, self._read_timeout)

        async def read() -> Snapshot:
            nonlocal head, final
            if head is None and not final:
                head = await self.block_times.head(network, source, block)
            if head is not None:
                final = block <= self.block_times.final_below(network, head)
            snapshot = await source.snapshot(
                addresses, with_prices=with_prices, timeout=budget, block_number=block
            )
            await self._cache.set(key, snapshot, immutable=final)
            return snapshot

        task = asyncio.create_task(read())
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    async def _read_and_store(
        self, key: str, read: Callable[[float], Awaitable[Snapshot]], timeout: float
    ) -> Snapshot:
        async def fresh(timeout: float) -> Snapshot:
            snapshot = await read(timeout)
            # The block follower may have stored a newer read meanwhile: keep that one.
            newer = await self._cache.get(key)
            if newer is not None and newer.block_number > snapshot.block_number:
                return newer
            return snapshot

        # The cache looks once more (a read may have finished since the caller's miss,
        # here or on another replica sharing the cache) and reads once for all replicas.
        snapshot = await self._cache.fill(key, fresh, timeout)
        self._keep_last_good(key, snapshot)
        return snapshot

    async def _store(self, key: str, snapshot: Snapshot) -> None:
        """Cache a good read, and keep it as the key's last good read unless that is newer."""
        await self._cache.set(key, snapshot)
        self._keep_last_good(key, snapshot)

    def _keep_last_good(self, key: str, snapshot: Snapshot) -> None:
        if self._max_stale.get(snapshot.network, 0.0) <= 0:
            return  # stale-if-error is off for this network
        last = self._last_good.get(key)
        if last is None or last.snapshot.block_number <= snapshot.block_number:
            self._last_good[key] = _LastGood(snapshot, self._clock())
        self._last_good.move_to_end(key)
        while len(self._last_good) > self._last_good_entries:
            self._last_good.popitem(last=False)

    def _servable(self, network: str, key: str) -> Snapshot | None:
        """The key's last good read if stale-if-error may serve it now."""
        last = self._last_good.get(key)
        if last is None:
            return None
        max_stale = self._max_stale.get(network, 0.0)
        if max_stale <= 0 or self._clock() - last.read_at > max_stale:
            del self._last_good[key]  # only gets older: of no further use
            return None
        return last.snapshot

    def _forget(self, key: str, task: asyncio.Task[Snapshot]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is not None:
            log.debug("snapshot %s failed: %s", key[:24], task.exception())


def _part(whole: Snapshot, addresses: Sequence[str], with_prices: bool) -> Snapshot:
    """The part of a shared read one key asked for: as if read for that key alone."""
    return Snapshot(
        whole.network,
        whole.block_number,
        whole.block_timestamp,
        {a: whole.balances[a] for a in addresses},
        whole.feeds if with_prices else {},
    )


def _cache_key(tenant: str, network: str, addresses: list[str], with_prices: bool) -> str:
    """One namespace per tenant; hashed, so a tenant name cannot collide with a separator."""
    if len(addresses) == 1:
        return _single_key(tenant, network, addresses[0], with_prices)
    return _hashed_key(tenant, network, addresses, with_prices)


@lru_cache(maxsize=16_384)  # ~4 MB; the tenant is part of the key, so nothing is shared
def _single_key(tenant: str, network: str, address: str, with_prices: bool) -> str:
    """A wallet's key, hashed once: every warm wallet query and every change the block
    follower stores for a following tenant (1,000 per block for 1,000 streams) asks."""
    return _hashed_key(tenant, network, [address], with_prices)


def _hashed_key(
    tenant: str,
    network: str,
    addresses: list[str],
    with_prices: bool,
    *,
    at_block: int | None = None,
) -> str:
    """``at_block``: a past block's snapshot (a line no address can be: never a "now" key)."""
    past = () if at_block is None else (f"@{at_block}",)
    scope = "\n".join((tenant, network, "priced" if with_prices else "plain", *past, *addresses))
    return f"snapshot:{hashlib.sha256(scope.encode()).hexdigest()}"
