"""The watch use cases: a wallet's or a customer's balances, then every change.

Each watch subscribes to the hub *before* reading the current balance
(through ``BalanceQueries``, so it may come from the tenant's cache), so no
change can fall between the two; the hub drops anything not newer than that
first state.  On a cache miss the read is ``initial_reads``'s when given: one
read for the streams opening together (``service.watch.initial_reads``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from fractions import Fraction

from service.balances import BalanceQueries, SharedRead
from service.domain import parse_customer_id, parse_wallet_id
from service.ports import WalletDirectory
from service.watch.hub import WalletUpdate, WatchHub, WatchUpdate

__all__ = ["BalanceWatches", "CustomerWatchUpdate"]


@dataclass(frozen=True)
class CustomerWatchUpdate:
    """One message of a customer watch; ``total`` only on the initial one (it needs prices)."""

    customer_id: str
    update: WatchUpdate
    total: Fraction | None = None
    total_currency: str = ""


class BalanceWatches:
    def __init__(
        self,
        directory: WalletDirectory,
        queries: BalanceQueries,
        hub: WatchHub,
        initial_reads: SharedRead | None = None,
    ) -> None:
        self._directory = directory
        self._queries = queries
        self._hub = hub
        self._initial_reads = initial_reads

    async def watch_wallet(self, tenant: str, wallet_id: str) -> AsyncGenerator[WatchUpdate, None]:
        """The wallet's current balance, then one update per change until the hub closes.

        Raises ``WalletNotFound`` (before the first update, or when the wallet is deleted).
        """
        wallet = await self._directory.get_wallet(tenant, parse_wallet_id(wallet_id))
        subscription = self._hub.subscribe(tenant, [wallet])
        try:
            balance = await self._queries.balance_of(tenant, wallet, shared=self._initial_reads)
            subscription.start_from([balance])
            yield WatchUpdate((WalletUpdate(balance, "", ()),), 0, initial=True)
            while (update := await subscription.next()) is not None:
                yield update
        finally:
            self._hub.unsubscribe(subscription)

    async def watch_customer(
        self, tenant: str, customer_id: str
    ) -> AsyncGenerator[CustomerWatchUpdate, None]:
        """Every wallet of the customer with the total, then the wallets of each change."""
        wallets = await self._directory.customer_wallets(tenant, parse_customer_id(customer_id))
        subscription = self._hub.subscribe(tenant, wallets, customer_id=customer_id)
        try:
            balances = await self._queries.balances_of(
                tenant, customer_id, wallets, shared=self._initial_reads
            )
            subscription.start_from(balances.wallets)
            first = WatchUpdate(
                tuple(WalletUpdate(w, "", ()) for w in balances.wallets), 0, initial=True
            )
            yield CustomerWatchUpdate(customer_id, first, balances.total, balances.total_currency)
            while (update := await subscription.next()) is not None:
                yield CustomerWatchUpdate(customer_id, update)
        finally:
            self._hub.unsubscribe(subscription)
