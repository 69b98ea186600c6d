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

Per block, the shared work is done once: each wallet's balance is described
once (``_Offered``), whatever the number of streams watching it, and the
``WalletUpdate`` taken from it is built once per previous state, so streams that
were sent the same thing get the very same update object (the servicer builds
one protobuf message for them).  Each subscription finds its wallet at an
address through an index, so a customer watch costs the same per changed
address whatever its number of wallets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import NamedTuple

from service.domain import BalanceChange, BlockRef, Snapshot, Wallet, WalletBalance
from service.errors import BalancesError, CustomerNotFound, WalletNotFound

__all__ = ["Subscription", "WalletUpdate", "WatchHub", "WatchUpdate"]

log = logging.getLogger(__name__)

# How the hub turns a wallet and a snapshot holding its address into its balances.
DescribeWallet = Callable[[Wallet, Snapshot], WalletBalance]
# Reads a wallet again (the directory's ``get_wallet``): raises WalletNotFound once deleted.
GetWallet = Callable[[str, str], Awaitable[Wallet]]


class WalletUpdate(NamedTuple):  # built per stream and block: a tuple builds fastest
    """A wallet's balances after an update, and what changed since the previous message."""

    balance: WalletBalance
    block_hash: str  # "" for the initial state (it may come from the cache)
    changes: tuple[BalanceChange, ...]  # since the consumer's previous message
    # This state corrects one announced at a block a reorg replaced (see ``push``).
    reorged: bool = False


class WatchUpdate(NamedTuple):
    """One message of a watch: the wallets that changed, and how many updates were folded in."""

    wallets: tuple[WalletUpdate, ...]
    coalesced_updates: int
    initial: bool = False
    # A customer watch's wallets deleted since the previous message (as last sent), and
    # those registered since (not read yet: the watch reads them, then ``join_from``).
    removed: tuple[WalletBalance, ...] = ()
    joined: tuple[Wallet, ...] = ()


class _Closed:
    """The hub was closed (server shutdown): the stream ends normally."""


_CLOSED = _Closed()


class _Offered:
    """One wallet's balance at one block, shared by every subscription watching the wallet."""

    __slots__ = ("_updates", "balance", "block_hash", "reorged")

    def __init__(self, balance: WalletBalance, block_hash: str, reorged: bool = False) -> None:
        self.balance = balance
        self.block_hash = block_hash
        self.reorged = reorged
        # (previous state sent, the update from it); usually one entry.  Holding the
        # previous state keeps its id from being reused while it is a key here.
        self._updates: list[tuple[WalletBalance | None, WalletUpdate]] = []

    def update_from(self, previous: WalletBalance | None) -> WalletUpdate:
        """The update for a consumer last sent ``previous``: one object per ``previous``."""
        for sent, update in self._updates:
            if sent is previous:
                return update
        update = WalletUpdate(
            self.balance, self.block_hash, _changes(previous, self.balance), self.reorged
        )
        self._updates.append((previous, update))
        return update


class Subscription:
    """One consumer's mailbox: the latest pending state per wallet and an update counter."""

    def __init__(
        self, tenant: str, wallets: Iterable[Wallet], customer_id: str | None = None
    ) -> None:
        self.tenant = tenant
        self.customer_id = customer_id  # set for a customer watch
        self.wallets: dict[str, Wallet] = {w.wallet_id: w for w in wallets}
        # A tenant has one wallet per (network, address), so a customer has too.
        self._at: dict[tuple[str, str], Wallet] = {
            (w.network, w.address): w for w in self.wallets.values()
        }
        self._sent: dict[str, WalletBalance] = {}
        self._pending: dict[str, _Offered] = {}
        # Customer watches: wallets that joined and await their first read (their pending
        # states wait too), joined ones not yet handed out, and deleted ones to announce.
        self._joining: set[str] = set()
        self._joined: list[Wallet] = []
        self._left: list[WalletBalance] = []
        self.membership = 0  # moves whenever a wallet joins or leaves (``WatchHub.reconcile``)
        self._updates = 0
        self._wakeup = asyncio.Event()
        self._end: BalancesError | _Closed | None = None
        self.started = False  # has its initial state (``start_from``)

    @property
    def ended(self) -> bool:
        return self._end is not None

    def start_from(self, balances: Iterable[WalletBalance]) -> None:
        """The initial state the consumer was given; pending older or equal states are dropped."""
        self.started = True
        for balance in balances:
            self._sent[balance.wallet.wallet_id] = balance
        for wallet_id, offered in list(self._pending.items()):
            del self._pending[wallet_id]  # judged against what was just sent, not itself
            if self._is_news(wallet_id, offered.balance):
                self._pending[wallet_id] = offered
        self._updates = min(self._updates, 1) if self._pending else 0

    def wallet_at(self, network: str, address: str) -> Wallet | None:
        return self._at.get((network, address))

    def push(self, states: Iterable[_Offered]) -> None:
        """Offer one block's states; never waits.  One block, one update."""
        if self._end is not None:
            return
        news = False
        for offered in states:
            wallet_id = offered.balance.wallet.wallet_id
            if wallet_id not in self.wallets:
                continue
            if offered.reorged:
                news |= self._corrects(wallet_id, offered)
            elif self._is_news(wallet_id, offered.balance):
                self._pending[wallet_id] = offered
                news = True
        if news:
            self._updates += 1
            self._wakeup.set()
        elif not self._pending:
            self._updates = 0  # a correction voided what was pending

    def _corrects(self, wallet_id: str, offered: _Offered) -> bool:
        """A reorg correction, whatever its block number (it may be at or below the
        replaced one): news unless the consumer already holds its amounts; then what
        is pending (replaced) is void, and later blocks are judged against this one."""
        sent = self._sent.get(wallet_id)
        if sent is not None and sent.amounts == offered.balance.amounts:
            self._pending.pop(wallet_id, None)
            self._sent[wallet_id] = offered.balance
            return False
        self._pending[wallet_id] = offered
        return True

    def end(self, reason: BalancesError | None) -> None:
        """End the stream: with ``reason`` as its error, or normally (None)."""
        if self._end is None:
            self._end = reason if reason is not None else _CLOSED
            self._wakeup.set()

    def drop_wallet(self, wallet_id: str) -> None:
        """A customer watch announces the wallet's removal if its consumer was sent it."""
        wallet = self.wallets.pop(wallet_id, None)
        if wallet is not None:
            self._at.pop((wallet.network, wallet.address), None)
        self._pending.pop(wallet_id, None)
        self.membership += 1
        sent = self._sent.pop(wallet_id, None)
        self._joining.discard(wallet_id)
        self._joined = [w for w in self._joined if w.wallet_id != wallet_id]
        if sent is not None and self.customer_id is not None:
            self._left.append(sent)
            self._wakeup.set()

    def add_wallet(self, wallet: Wallet) -> bool:
        """A wallet registered to a customer watch's customer joins it (False: it has it,
        or the stream ended); the consumer is handed it to read (``WatchUpdate.joined``)."""
        key = (wallet.network, wallet.address)
        if self._end is not None or wallet.wallet_id in self.wallets or key in self._at:
            return False
        self.wallets[wallet.wallet_id] = wallet
        self._at[key] = wallet
        self.membership += 1
        self._joining.add(wallet.wallet_id)
        self._joined.append(wallet)
        self._wakeup.set()
        return True

    def join_from(self, balances: Iterable[WalletBalance]) -> None:
        """The first state of joined wallets, as given to the consumer: pending states of
        theirs that are not newer are dropped, the newer ones now go out."""
        for balance in balances:
            wallet_id = balance.wallet.wallet_id
            if wallet_id not in self._joining:
                continue  # deleted meanwhile
            self._joining.discard(wallet_id)
            self._sent[wallet_id] = balance
            offered = self._pending.pop(wallet_id, None)
            if offered is not None and self._is_news(wallet_id, offered.balance):
                self._pending[wallet_id] = offered
                self._updates = max(self._updates, 1)
                self._wakeup.set()

    async def next(self) -> WatchUpdate | None:
        """The next update (waiting for one); None when the hub closed; raises on a deletion.

        Pending updates are delivered before an end, except a deletion: a
        deleted wallet's stream ends at once (a customer watch first announces
        the removal of its last wallet).
        """
        while True:
            if isinstance(self._end, BalancesError) and not self._left:
                raise self._end
            if self._left or self._joined or self._takeable():
                return self._take()
            if self._end is not None:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def _takeable(self) -> bool:
        if not self._joining:
            return bool(self._pending)
        return any(wallet_id not in self._joining for wallet_id in self._pending)

    def _take(self) -> WatchUpdate:
        pending, self._pending = self._pending, {}
        updates, self._updates = self._updates, 0
        sent = self._sent
        wallets = []
        for wallet_id, offered in pending.items():
            if wallet_id in self._joining:
                self._pending[wallet_id] = offered  # goes out after the wallet's first read
                continue
            wallets.append(offered.update_from(sent.get(wallet_id)))
            sent[wallet_id] = offered.balance
        if not self._left and not self._joined:
            return WatchUpdate(tuple(wallets), coalesced_updates=max(updates - 1, 0))
        left, self._left = tuple(self._left), []
        joined, self._joined = tuple(self._joined), []
        return WatchUpdate(tuple(wallets), max(updates - 1, 0), removed=left, joined=joined)

    def _is_news(self, wallet_id: str, balance: WalletBalance) -> bool:
        """Newer than and different from what the consumer has or is about to get."""
        pending = self._pending.get(wallet_id)
        reference = pending.balance if pending is not None else self._sent.get(wallet_id)
        if reference is None:
            return True
        # The amounts come in the network's token order; each compares currency and raw.
        # The same height counts as newer: a block that replaced it in a reorg.
        return (
            balance.block_number >= reference.block_number and balance.amounts != reference.amounts
        )


class WatchHub:
    """Subscriptions by (network, address); a ChangeListener and a WatchedSource for followers."""

    def __init__(self, describe: DescribeWallet, get_wallet: GetWallet) -> None:
        self._describe = describe
        self._get_wallet = get_wallet
        self._by_address: dict[tuple[str, str], set[Subscription]] = {}
        self._customers: dict[tuple[str, str], set[Subscription]] = {}  # (tenant, customer)
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
        if customer_id is not None:
            self._customers.setdefault((tenant, customer_id), set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.customer_id is not None:
            customer = (subscription.tenant, subscription.customer_id)
            streams = self._customers.get(customer)
            if streams is not None:
                streams.discard(subscription)
                if not streams:
                    del self._customers[customer]
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

    # --- registrations and deletions ----------------------------------------------------

    async def wallet_registered(self, wallet: Wallet) -> None:
        """The customer's watches take the new wallet in (idempotent: the bus may repeat it)."""
        if self._closed:
            return
        for subscription in list(self._customers.get((wallet.tenant, wallet.customer_id), ())):
            if subscription.add_wallet(wallet):
                key = (wallet.network, wallet.address)
                self._by_address.setdefault(key, set()).add(subscription)

    async def wallet_deleted(self, wallet: Wallet) -> None:
        """End (or, for a customer watch, shrink) every subscription watching ``wallet``."""
        for subscription in list(self._by_address.get((wallet.network, wallet.address), ())):
            watched = subscription.wallets.get(wallet.wallet_id)
            if watched is not None and watched.tenant == wallet.tenant:
                self._remove_wallet(subscription, watched)

    async def reconcile(
        self, subscription: Subscription, listed: Collection[Wallet], since: int
    ) -> None:
        """Make a customer watch hold the customer's wallets as ``listed`` by the directory
        (a lookup begun at ``subscription.membership == since``): what this process was not
        told of (another replica's registration or deletion, a CLI import).  A lookup that
        raced a join or a leave here proves nothing and is ignored: the next one decides."""
        if subscription.membership != since or subscription.ended:
            return
        listed_ids = {w.wallet_id for w in listed}
        for wallet in list(subscription.wallets.values()):
            if wallet.wallet_id not in listed_ids:
                self._remove_wallet(subscription, wallet)
        for wallet in listed:
            if wallet.wallet_id not in subscription.wallets and subscription.add_wallet(wallet):
                key = (wallet.network, wallet.address)
                self._by_address.setdefault(key, set()).add(subscription)

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
        """Addresses of subscriptions that have their initial state: until then the stream's
        own read covers it (the follower adopts that read rather than read it again), and
        a follower's later first read of it is offered as a baseline, so nothing is lost."""
        return {
            address
            for (net, address), watchers in self._by_address.items()
            if net == network and any(s.started for s in watchers)
        }

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
        addresses = {c.address for c in changes if c.network == block.network}
        corrected = {c.address for c in changes if c.reorg and c.network == block.network}
        self._offer(block, addresses, snapshot, corrected)

    async def balances_baselined(
        self, block: BlockRef, addresses: Collection[str], snapshot: Snapshot
    ) -> None:
        """First reads of addresses: a subscriber whose initial state was stale learns the truth."""
        self._offer(block, addresses, snapshot)

    def _offer(
        self,
        block: BlockRef,
        addresses: Iterable[str],
        snapshot: Snapshot,
        corrected: Collection[str] = (),
    ) -> None:
        """Each watched wallet described once; each subscription pushed once (one update).
        The wallets at ``corrected`` addresses are offered as reorg corrections."""
        network, balances = block.network, snapshot.balances
        offered: dict[tuple[str, str], _Offered] = {}  # by (tenant, wallet ID)
        several: dict[Subscription, list[_Offered]] = {}  # customer watches, pushed last
        for address in addresses:
            watchers = self._by_address.get((network, address))
            if not watchers or address not in balances:
                continue
            for subscription in watchers:
                wallet = subscription.wallet_at(network, address)
                if wallet is None:
                    continue
                key = (wallet.tenant, wallet.wallet_id)
                state = offered.get(key)
                if state is None:
                    state = offered[key] = _Offered(
                        self._describe(wallet, snapshot), block.hash, address in corrected
                    )
                if len(subscription.wallets) == 1:
                    subscription.push((state,))  # its only wallet: nothing else to wait for
                else:
                    several.setdefault(subscription, []).append(state)
        for subscription, states in several.items():
            subscription.push(states)


def _changes(previous: WalletBalance | None, current: WalletBalance) -> tuple[BalanceChange, ...]:
    """What differs from ``previous`` (None: everything, from 0).  A plain loop: this runs
    for every stream at every block."""
    network, address = current.wallet.network, current.wallet.address
    if previous is not None and len(previous.amounts) == len(current.amounts):
        found = []
        for before, now in zip(previous.amounts, current.amounts, strict=True):
            if before.currency != now.currency:
                break  # the network's tokens changed order: compare by currency below
            if before.raw != now.raw:
                found.append(
                    BalanceChange(network, address, now.currency, now.decimals, before.raw, now.raw)
                )
        else:
            return tuple(found)
    before_by_currency: dict[str, int] = (
        {a.currency: a.raw for a in previous.amounts} if previous is not None else {}
    )
    return tuple(
        BalanceChange(
            network, address, a.currency, a.decimals, before_by_currency.get(a.currency, 0), a.raw
        )
        for a in current.amounts
        if before_by_currency.get(a.currency) != a.raw
    )
