"""The customer total of every customer watch message, priced at the blocks it was read at.

The block follower reads balances without prices, so a watch message's total is
priced here: each network's holdings (every wallet's latest state) at the
prices of the newest block among them, from ``PriceBook``.  Pegged tokens need
no read; feeds are read once per (network, block) for every stream of every
tenant (prices are public chain state, the same for all), pinned to that block,
so the total of a message is exactly what ``GetCustomerBalances`` would have
given at those blocks: exact sums, rounded once, half to even, to the minor unit.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from fractions import Fraction

from service.domain import CustomerBalances, PegPrice, Token, WalletBalance
from service.errors import BalancesError, ChainUnavailable
from service.money import round_half_even, value_of
from service.ports import SnapshotSource
from service.pricing import token_price
from service.watch.hub import WatchUpdate

__all__ = ["CustomerTotal", "PriceBook"]

Prices = Mapping[str, Fraction]  # currency -> price of one unit in the base currency

PRICE_ENTRIES = 1024  # (network, block) price sets kept, per process


class PriceBook:
    """Every token's price on a network at a block; feed reads shared and kept (LRU)."""

    def __init__(
        self,
        sources: Mapping[str, SnapshotSource],
        tokens: Mapping[str, tuple[Token, ...]],
        *,
        read_timeout: float,
        entries: int = PRICE_ENTRIES,
    ) -> None:
        self._sources = sources
        self.tokens = tokens
        self._read_timeout = read_timeout
        self._entries = entries
        self._kept: OrderedDict[tuple[str, int], Prices] = OrderedDict()
        self._inflight: dict[tuple[str, int], asyncio.Task[Prices]] = {}
        self.reads = 0  # feed reads made (tests)

    async def prices(self, network: str, block_number: int) -> Prices:
        """Raises ``PriceUnavailable`` (a feed stale or not positive at that block) or
        ``ChainUnavailable``; failures are not kept."""
        tokens = self.tokens[network]
        if all(isinstance(t.price, PegPrice) for t in tokens):
            return {t.currency: t.price.value for t in tokens if isinstance(t.price, PegPrice)}
        key = (network, block_number)
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return kept
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._read(network, block_number, tokens))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        # shield: one stream going away must not cancel the read the others wait on.
        return await asyncio.shield(task)

    async def _read(self, network: str, block_number: int, tokens: tuple[Token, ...]) -> Prices:
        source = self._sources.get(network)
        if source is None:
            raise ChainUnavailable(network, "this network is not configured on the server")
        self.reads += 1
        snapshot = await source.snapshot(
            [], with_prices=True, timeout=self._read_timeout, block_number=block_number
        )
        return {t.currency: token_price(t, snapshot) for t in tokens}

    def _settle(self, key: tuple[str, int], task: asyncio.Task[Prices]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return  # failures are not kept (the exception is retrieved: no "never retrieved")
        self._kept[key] = task.result()
        while len(self._kept) > self._entries:
            self._kept.popitem(last=False)


class CustomerTotal:
    """One customer watch's total: its wallets' latest states, priced by ``PriceBook``."""

    def __init__(self, book: PriceBook, minor_unit_digits: int, initial: CustomerBalances) -> None:
        self._book = book
        self._tokens = book.tokens
        self._digits = minor_unit_digits
        self._latest: dict[str, WalletBalance] = {w.wallet.wallet_id: w for w in initial.wallets}
        self.total = initial.total  # the last total computed
        # Per network, the block its prices were last taken at, and those prices (the first
        # message was priced by the query; a network is priced here once it is needed).
        self._priced: dict[str, tuple[int, Prices]] = {}

    async def after(self, update: WatchUpdate) -> tuple[Fraction, bool]:
        """The total once ``update`` is applied, and False; or, when a price cannot be read,
        the last total and True (the balances of the message are true regardless)."""
        for wallet in update.wallets:
            self._latest[wallet.balance.wallet.wallet_id] = wallet.balance
        for removed in update.removed:
            self._latest.pop(removed.wallet.wallet_id, None)
        try:
            self.total = await self._compute()
        except (BalancesError, TimeoutError):
            return self.total, True
        return self.total, False

    async def _compute(self) -> Fraction:
        held: dict[str, dict[str, int]] = {}  # network -> currency -> raw amount
        newest: dict[str, int] = {}  # network -> the newest block among its wallets
        for balance in self._latest.values():
            network = balance.wallet.network
            amounts = held.setdefault(network, {})
            for amount in balance.amounts:
                amounts[amount.currency] = amounts.get(amount.currency, 0) + amount.raw
            newest[network] = max(newest.get(network, 0), balance.block_number)
        # A feed is read only where some of its token is held: nothing is worth nothing.
        networks = [
            n
            for n in sorted(held)
            if any(
                held[n].get(t.currency, 0) and not isinstance(t.price, PegPrice)
                for t in self._tokens[n]
            )
        ]
        prices = dict(
            zip(
                networks,
                await asyncio.gather(*(self._prices(n, newest[n]) for n in networks)),
                strict=True,
            )
        )
        values = []
        for network, amounts in held.items():
            for token in self._tokens[network]:
                raw = amounts.get(token.currency, 0)
                if not raw:
                    continue
                price = token.price
                unit = (
                    price.value if isinstance(price, PegPrice) else prices[network][token.currency]
                )
                values.append(value_of(raw, token.decimals, unit))
        return round_half_even(values, self._digits)

    async def _prices(self, network: str, block_number: int) -> Prices:
        priced = self._priced.get(network)
        if priced is not None and priced[0] == block_number:
            return priced[1]
        prices = await self._book.prices(network, block_number)
        self._priced[network] = (block_number, prices)
        return prices
