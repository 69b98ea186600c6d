"""The watch use cases: a wallet's or a customer's balances, then every change.

Each watch subscribes to the hub *before* reading the current balance
(through ``BalanceQueries``, so it may come from the tenant's cache), so no
change can fall between the two; the hub drops anything not newer than that
first state.  On a cache miss the read is ``initial_reads``'s when given: one
read for the streams opening together (``service.watch.initial_reads``).

A customer watch follows the customer: a wallet registered meanwhile joins it
(the hub hands it over; it is read here like the first state, then its changes
follow), a deleted one is announced once more, marked removed, and then never
again.  Every message carries the customer total (``service.watch.totals``).

The registry tells this process's hub of its own registrations and deletions
at once.  What it cannot tell (a wallet registered or deleted on another
replica, or by ``balances wallets import`` in another process) each customer
watch finds by looking up the customer's wallets every ``membership_interval``
seconds: a lookup in the directory's cache, which drops what another writer
changed within a second, so it costs a database query only after a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from fractions import Fraction

from service.balances import BalanceQueries, SharedRead
from service.domain import Wallet, WalletBalance, parse_customer_id, parse_wallet_id
from service.errors import CustomerNotFound
from service.ports import WalletDirectory
from service.watch.hub import Subscription, WalletUpdate, WatchHub, WatchUpdate
from service.watch.totals import CustomerTotal, PriceBook

__all__ = ["BalanceWatches", "CustomerWatchUpdate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustomerWatchUpdate:
    """One message of a customer watch and the customer total after it.

    ``total_stale``: a price could not be read for this message, so ``total`` is the
    last one computed (the balances themselves are fresh)."""

    customer_id: str
    update: WatchUpdate
    total: Fraction | None = None
    total_currency: str = ""
    total_stale: bool = False


class BalanceWatches:
    def __init__(
        self,
        directory: WalletDirectory,
        queries: BalanceQueries,
        hub: WatchHub,
        initial_reads: SharedRead | None = None,
        *,
        prices: PriceBook,
        minor_unit_digits: int,
        membership_interval: float = 2.0,
    ) -> None:
        self._directory = directory
        self._queries = queries
        self._hub = hub
        self._initial_reads = initial_reads
        self._prices = prices
        self._minor_unit_digits = minor_unit_digits
        self._membership_interval = membership_interval

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
        """Every wallet of the customer with the total, then per message the wallets that
        changed, joined (first state) or left (``removed``), with the total after it.

        Raises ``CustomerNotFound`` (before the first update, or once its last wallet
        is deleted, after announcing that removal).
        """
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
            total = CustomerTotal(self._prices, self._minor_unit_digits, balances)
            loop = asyncio.get_running_loop()
            check_at = loop.time() + self._membership_interval
            while True:
                try:
                    # Cancelling ``next`` while it waits loses nothing: the mailbox holds.
                    async with asyncio.timeout_at(check_at):
                        next_update = await subscription.next()
                except TimeoutError:
                    await self._reconcile(tenant, customer_id, subscription)
                    check_at = loop.time() + self._membership_interval
                    continue
                if next_update is None:
                    break
                update = next_update
                if update.joined:
                    joined = await self._first_states(tenant, update.joined)
                    subscription.join_from(joined)
                    joined = [b for b in joined if b.wallet.wallet_id in subscription.wallets]
                    update = update._replace(
                        wallets=update.wallets + tuple(WalletUpdate(b, "", ()) for b in joined)
                    )
                    if not update.wallets and not update.removed:
                        continue  # every joined wallet was deleted before its read
                amount, stale = await total.after(update)
                yield CustomerWatchUpdate(
                    customer_id, update, amount, balances.total_currency, total_stale=stale
                )
        finally:
            self._hub.unsubscribe(subscription)

    async def _reconcile(self, tenant: str, customer_id: str, subscription: Subscription) -> None:
        """The customer's wallets as the directory lists them now (a deletion found so
        may end the stream)."""
        since = subscription.membership
        try:
            listed = await self._directory.customer_wallets(tenant, customer_id)
        except CustomerNotFound:
            listed = []  # every wallet deleted
        except Exception as exc:  # the directory failing must not end a stream: next time
            log.warning("customer watch: looking up its wallets failed (%s)", type(exc).__name__)
            return
        await self._hub.reconcile(subscription, listed, since)

    async def _first_states(self, tenant: str, wallets: tuple[Wallet, ...]) -> list[WalletBalance]:
        """Joined wallets' balances, read as a stream's first state is (a failure ends the
        stream, as at its start: the client's retry starts afresh with every wallet)."""
        return list(
            await asyncio.gather(
                *(self._queries.balance_of(tenant, w, shared=self._initial_reads) for w in wallets)
            )
        )
