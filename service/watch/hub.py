"""The watch hub: block-follower output fanned out to watch subscriptions, one mailbox each.

A ``Subscription`` watches one or more wallets (one for a wallet watch, all of
a customer's for a customer watch).  Its mailbox holds at most the latest state
of each of its wallets plus a count of the updates that arrived since the
consumer last took one: a slow consumer gets the newest state and the number
of updates folded into it, memory stays bounded by its wallet count, and
pushing never waits, so one slow consumer cannot hold up the follower or any
other subscriber.

What a consumer takes is always relative to what it was last given: the
changes of a message are the differences from the previous message of that
stream, and a state that is not newer, or not different, is never sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from service.domain import BalanceChange, BlockRef, Snapshot, TokenAmount, Wallet, WalletBalance
from service.errors import BalancesError, CustomerNotFound, WalletNotFound

__all__ = ["Subscription", "WalletUpdate", "WatchHub", "WatchUpdate"]

log = logging.getLogger(__name__)

# How the hub turns a wallet and a snapshot holding its address into its balances.
DescribeWallet = Callable[[Wallet, Snapshot], WalletBalance]
# Reads a wallet again (the directory's ``get_wallet``): raises WalletNotFound once deleted.
GetWallet = Callable[[str, str], Awaitable[Wallet]]


@dataclass(frozen=True)
class WalletUpdate:
    """A wallet's balances after an update, and what changed since the previous message."""

    balance: WalletBalance
    block_hash: str  # "" for the initial state (it may come from the cache)
    changes: tuple[BalanceChange, ...]  # since the consumer's previous message


@dataclass(frozen=True)
class WatchUpdate:
    """One message of a watch: the wallets that changed, and how many updates were folded in."""

    wallets: tuple[WalletUpdate, ...]
    coalesced_updates: int
    initial: bool = False


class _Closed:
    """The hub was closed (server shutdown): the stream ends normally."""


_CLOSED = _Closed()


class Subscription:
    """One consumer's mailbox: the latest pending state per wallet and an update counter."""

    def __init__(
        self, tenant: str, wallets: Iterable[Wallet], customer_id: str | None = None
    ) -> None:
        self.tenant = tenant
        self.customer_id = customer_id  # set for a customer watch
        self.wallets: dict[str, Wallet] = {w.wallet_id: w for w in wallets}
        self._sent: dict[str, WalletBalance] = {}
        self._pending: dict[str, tuple[WalletBalance, str]] = {}
        self._updates = 0
        self._wakeup = asyncio.Event()
        self._end: BalancesError | _Closed | None = None

    @property
    def ended(self) -> bool:
        return self._end is not None

    def start_from(self, balances: Iterable[WalletBalance]) -> None:
        """The initial state the consumer was given; pending older or equal states are dropped."""
        for balance in balances:
            self._sent[balance.wallet.wallet_id] = balance
        for wallet_id, (balance, _) in list(self._pending.items()):
            if not self._is_news(wallet_id, balance):
                del self._pending[wallet_id]
        self._updates = min(self._updates, 1) if self._pending else 0

    def push(self, states: Iterable[tuple[WalletBalance, str]]) -> None:
        """Offer one block's states (balance, block hash); never waits.  One block, one update."""
        if self._end is not None:
            return
        news = False
        for balance, block_hash in states:
            wallet_id = balance.wallet.wallet_id
            if wallet_id in self.wallets and self._is_news(wallet_id, balance):
                self._pending[wallet_id] = (balance, block_hash)
                news = True
        if news:
            self._updates += 1
            self._wakeup.set()

    def end(self, reason: BalancesError | None) -> None:
        """End the stream: with ``reason`` as its error, or normally (None)."""
        if self._end is None:
            self._end = reason if reason is not None else _CLOSED
            self._wakeup.set()

    def drop_wallet(self, wallet_id: str) -> None:
        self.wallets.pop(wallet_id, None)
        self._pending.pop(wallet_id, None)
        self._sent.pop(wallet_id, None)

    async def next(self) -> WatchUpdate | None:
        """The next update (waiting for one); None when the hub closed; raises on a deletion.

        Pending updates are delivered before an end, except a deletion: a
        deleted wallet's stream ends at once.
        """
        while True:
            if isinstance(self._end, BalancesError):
                raise self._end
            if self._pending:
                return self._take()
            if self._end is not None:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take(self) -> WatchUpdate:
        pending, self._pending = self._pending, {}
        updates, self._updates = self._updates, 0
        wallets = []
        for wallet_id, (balance, block_hash) in pending.items():
            previous = self._sent.get(wallet_id)
            self._sent[wallet_id] = balance
            wallets.append(WalletUpdate(balance, block_hash, _changes(previous, balance)))
        return WatchUpdate(tuple(wallets), coalesced_updates=max(updates - 1, 0))

    def _is_news(self, wallet_id: str, balance: WalletBalance) -> bool:
        """Newer than and different from what the consumer has or is about to get."""
        pending = self._pending.get(wallet_id)
        reference = pending[0] if pending is not None else self._sent.get(wallet_id)
        if reference is None:
            return True
        return balance.block_number > reference.block_number and _raw(balance) != _raw(reference)


class WatchHub:
    """Subscriptions by (network, address); a ChangeListener and a WatchedSource for followers."""

    def __init__(self, describe: DescribeWallet, get_wallet: GetWallet) -> None:
        self._describe = describe
        self._get_wallet = get_wallet
        self._by_address: dict[tuple[str, str], set[Subscription]] = {}
        self._closed = False

    # --- subscriptions ------------------------------------------------------------------

    def subscribe(
        self, tenant: str, wallets: Collection[Wallet], *, customer_id: str | None = None
    ) -> Subscription:
        """Watch ``wallets`` (a customer watch names its ``customer_id``)."""
        subscription = Subscription(tenant, wallets, customer_id)
        if self._closed:
            subscription.end(None)
            return subscription
        for wallet in wallets:
            self._by_address.setdefault((wallet.network, wallet.address), set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        for wallet in subscription.wallets.values():
            key = (wallet.network, wallet.address)
            watchers = self._by_address.get(key)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._by_address[key]

    def subscriber_count(self) -> int:
        return len({s for watchers in self._by_address.values() for s in watchers})

    def close(self) -> None:
        """Server shutdown: every stream ends normally and new ones end at once."""
        self._closed = True
        for watchers in list(self._by_address.values()):
            for subscription in list(watchers):
                subscription.end(None)

    # --- deletions ----------------------------------------------------------------------

    async def wallet_deleted(self, wallet: Wallet) -> None:
        """End (or, for a customer watch, shrink) every subscription watching ``wallet``."""
        for subscription in list(self._by_address.get((wallet.network, wallet.address), ())):
            watched = subscription.wallets.get(wallet.wallet_id)
            if watched is not None and watched.tenant == wallet.tenant:
                self._remove_wallet(subscription, watched)

    async def address_released(self, network: str, address: str) -> None:
        """A wallet at (network, address) was deleted: find which by asking the directory."""
        for subscription in list(self._by_address.get((network, address), ())):
            for wallet in list(subscription.wallets.values()):
                if (wallet.network, wallet.address) != (network, address):
                    continue
                try:
                    await self._get_wallet(wallet.tenant, wallet.wallet_id)
                except WalletNotFound:
                    self._remove_wallet(subscription, wallet)

    def _remove_wallet(self, subscription: Subscription, wallet: Wallet) -> None:
        """A wallet watch ends with NOT_FOUND; a customer watch does when no wallet is left."""
        key = (wallet.network, wallet.address)
        watchers = self._by_address.get(key)
        if watchers is not None:
            watchers.discard(subscription)  # a customer has one wallet per (network, address)
            if not watchers:
                del self._by_address[key]
        subscription.drop_wallet(wallet.wallet_id)
        if not subscription.wallets:
            customer_id = subscription.customer_id
            subscription.end(
                CustomerNotFound(customer_id) if customer_id else WalletNotFound(wallet.wallet_id)
            )

    # --- follower side ------------------------------------------------------------------

    async def watched_addresses(self, network: str) -> set[str]:
        return {address for (net, address) in self._by_address if net == network}

    async def tenants_following(
        self, network: str, addresses: Collection[str]
    ) -> dict[str, set[str]]:
        """The tenants with a stream open on each of ``addresses`` (``CacheRefresh``)."""
        found: dict[str, set[str]] = {}
        for address in addresses:
            for subscription in self._by_address.get((network, address), ()):
                found.setdefault(address, set()).add(subscription.tenant)
        return found

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        self._offer(block, {c.address for c in changes if c.network == block.network}, snapshot)

    async def balances_baselined(
        self, block: BlockRef, addresses: Collection[str], snapshot: Snapshot
    ) -> None:
        """First reads of addresses: a subscriber whose initial state was stale learns the truth."""
        self._offer(block, addresses, snapshot)

    def _offer(self, block: BlockRef, addresses: Iterable[str], snapshot: Snapshot) -> None:
        by_subscription: dict[Subscription, list[tuple[WalletBalance, str]]] = {}
        for address in addresses:
            if address not in snapshot.balances:
                continue
            for subscription in self._by_address.get((block.network, address), ()):
                for wallet in subscription.wallets.values():
                    if (wallet.network, wallet.address) == (block.network, address):
                        state = (self._describe(wallet, snapshot), block.hash)
                        by_subscription.setdefault(subscription, []).append(state)
        for subscription, states in by_subscription.items():
            subscription.push(states)


def _raw(balance: WalletBalance) -> dict[str, int]:
    return {a.currency: a.raw for a in balance.amounts}


def _changes(previous: WalletBalance | None, current: WalletBalance) -> tuple[BalanceChange, ...]:
    before: dict[str, TokenAmount] = (
        {a.currency: a for a in previous.amounts} if previous is not None else {}
    )
    return tuple(
        BalanceChange(
            current.wallet.network,
            current.wallet.address,
            a.currency,
            a.decimals,
            before[a.currency].raw if a.currency in before else 0,
            a.raw,
        )
        for a in current.amounts
        if a.currency not in before or before[a.currency].raw != a.raw
    )
