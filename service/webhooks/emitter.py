"""Block changes -> ``balance.updated`` events in the outbox, one transaction per block.

The ``WebhookEmitter`` is both a ``ChangeListener`` (it turns a block's changes
into events) and a ``WatchedSource`` (it asks the followers to watch every
wallet of every tenant subscribed to ``balance.updated``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from service.domain import BalanceChange, BlockRef, Snapshot, Wallet
from service.ports import Clock, WebhookStore, utc_now
from service.records import NewWebhookEvent
from service.webhooks.payload import BALANCE_UPDATED, balance_updated_body, event_id

if TYPE_CHECKING:
    from service.ports import ChangeListener, WatchedSource

__all__ = ["WebhookEmitter"]

log = logging.getLogger(__name__)


class WebhookEmitter:
    """Writes one event per subscribed wallet and changed currency, then wakes delivery.

    A store failure propagates to the follower: events are durable only once
    ``balances_changed`` has returned.  An event's id comes from the change
    (``payload.event_id``): detected again (a new leader reading the block after a
    crash), it has the same id and the outbox keeps the first row, so its
    ``createdAt``, and with it the payload, is the one first stored.

    A reorg correction (``change.reorg``) is a new event with its own id; its outbox
    key is the block hash with the reorg number, so it is kept even where the chain
    went back to a block with an event for that wallet and currency already.
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        on_enqueued: Callable[[], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._on_enqueued = on_enqueued
        self._clock = clock

    async def watched_addresses(self, network: str) -> set[str]:
        wallets = await self._store.webhook_subscribers(network, BALANCE_UPDATED)
        return {w.address for w in wallets}

    async def tenants_following(
        self, network: str, addresses: Collection[str]
    ) -> dict[str, set[str]]:
        """The tenants with a webhook subscription over a wallet at each of ``addresses``."""
        wallets = await self._store.webhook_subscribers(network, BALANCE_UPDATED, set(addresses))
        found: dict[str, set[str]] = {}
        for wallet in wallets:
            found.setdefault(wallet.address, set()).add(wallet.tenant)
        return found

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        changes = [c for c in changes if c.network == block.network and c.previous != c.current]
        if not changes:
            return
        wallets = await self._store.webhook_subscribers(
            block.network, BALANCE_UPDATED, {c.address for c in changes}
        )
        if not wallets:
            return
        by_address: dict[str, list[Wallet]] = {}
        for wallet in wallets:
            by_address.setdefault(wallet.address, []).append(wallet)
        created_at = self._clock()
        events = [
            NewWebhookEvent(
                event_id=event_id(wallet.tenant, wallet.wallet_id, block, change),
                tenant=wallet.tenant,
                wallet_id=wallet.wallet_id,
                event_type=BALANCE_UPDATED,
                network=block.network,
                currency=change.currency,
                block_number=block.number,
                block_hash=_outbox_key(block, change),
                payload=balance_updated_body(
                    wallet_id=wallet.wallet_id,
                    customer_id=wallet.customer_id,
                    block=block,
                    change=change,
                    created_at=created_at,
                ),
                created_at=created_at,
            )
            for change in changes  # the follower's order; within it, by wallet ID
            for wallet in by_address.get(change.address, ())
        ]
        added = await self._store.enqueue_webhook_events(events)
        log.info(
            "network %s block %d: %d webhook events queued for %d wallets",
            block.network,
            block.number,
            added,
            len(wallets),
        )
        if added and self._on_enqueued is not None:
            self._on_enqueued()


def _outbox_key(block: BlockRef, change: BalanceChange) -> str:
    """What the outbox deduplicates a (wallet, currency) on: the block hash, and for a
    correction the reorg too (the hash alone may name an event the reorg corrects)."""
    return f"{block.hash}#reorg{change.reorg}" if change.reorg else block.hash


if TYPE_CHECKING:

    def _implements(emitter: WebhookEmitter) -> tuple[ChangeListener, WatchedSource]:
        """Checked by mypy only: the emitter satisfies both protocols."""
        return emitter, emitter
