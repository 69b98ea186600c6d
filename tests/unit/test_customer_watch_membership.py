"""A customer watch's wallets coming and going, in the hub alone (no chain, no server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from service.domain import Wallet
from service.errors import CustomerNotFound
from service.watch.hub import Subscription, WatchHub
from tests.unit.test_watch_hub import ADDR_2, WALLET, block, describe, never_found, snap

aio = pytest.mark.asyncio(loop_scope="session")

OTHER_TENANT = Wallet(
    "wal_x", "other", "cus_1", "polygon", ADDR_2, datetime(2024, 1, 1, tzinfo=UTC)
)
NEW = Wallet("wal_2", "default", "cus_1", "polygon", ADDR_2, datetime(2024, 1, 2, tzinfo=UTC))


def started_customer_watch(hub: WatchHub) -> Subscription:
    subscription = hub.subscribe("default", [WALLET], customer_id="cus_1")
    subscription.start_from([describe(WALLET, snap(10, a=1))])
    return subscription


@aio
async def test_a_joined_wallet_is_handed_over_and_its_changes_wait_for_its_first_read() -> None:
    hub = WatchHub(describe, never_found)
    subscription = started_customer_watch(hub)
    await hub.wallet_registered(OTHER_TENANT)  # another tenant's customer: not this one
    await hub.wallet_registered(replace(NEW, customer_id="cus_9"))
    assert subscription.wallets.keys() == {"wal_1"}

    await hub.wallet_registered(NEW)
    await hub.wallet_registered(NEW)  # repeated (the bus, a reconcile): once
    joined = await subscription.next()
    assert joined is not None and joined.joined == (NEW,) and joined.wallets == ()
    # The follower sees it before the watch read it: held back, not sent as news from 0.
    await hub.balances_baselined(block(12), [ADDR_2], snap(12, b=5))
    assert not subscription._takeable()
    subscription.join_from([describe(NEW, snap(11, b=4))])  # the watch's own read
    update = await subscription.next()
    assert update is not None
    ((wallet_update),) = update.wallets
    assert wallet_update.balance.wallet == NEW and wallet_update.balance.block_number == 12
    assert [(c.previous, c.current) for c in wallet_update.changes] == [(4, 5)]


@aio
async def test_a_state_no_newer_than_the_first_read_is_dropped() -> None:
    hub = WatchHub(describe, never_found)
    subscription = started_customer_watch(hub)
    await hub.wallet_registered(NEW)
    joined = await subscription.next()
    assert joined is not None and joined.joined == (NEW,)
    await hub.balances_baselined(block(12), [ADDR_2], snap(12, b=5))
    subscription.join_from([describe(NEW, snap(13, b=5))])  # read later than the follower
    assert not subscription._takeable()


@aio
async def test_a_removal_is_announced_once_with_the_last_state_then_the_stream_ends() -> None:
    hub = WatchHub(describe, never_found)
    subscription = started_customer_watch(hub)
    await hub.wallet_deleted(WALLET)
    await hub.wallet_deleted(WALLET)  # said twice: announced once
    removal = await subscription.next()
    assert removal is not None
    assert [b.wallet for b in removal.removed] == [WALLET] and removal.wallets == ()
    assert removal.removed[0] == describe(WALLET, snap(10, a=1))  # as last sent
    with pytest.raises(CustomerNotFound):
        await subscription.next()


@aio
async def test_a_joined_wallet_deleted_before_its_read_is_never_announced() -> None:
    hub = WatchHub(describe, never_found)
    subscription = started_customer_watch(hub)
    await hub.wallet_registered(NEW)
    await hub.wallet_deleted(NEW)  # nothing to take: neither its joining nor its leaving
    assert not subscription._joined and not subscription._left
    subscription.join_from([describe(NEW, snap(11, b=4))])  # the read finishing late
    assert subscription.wallets.keys() == {"wal_1"} and not subscription._takeable()


@aio
async def test_reconcile_adds_and_removes_but_ignores_a_lookup_that_raced_a_change() -> None:
    hub = WatchHub(describe, never_found)
    subscription = started_customer_watch(hub)
    since = subscription.membership
    await hub.wallet_registered(NEW)  # heard of while the lookup ran
    await hub.reconcile(subscription, [WALLET], since)  # the lookup predates NEW
    assert subscription.wallets.keys() == {"wal_1", "wal_2"}  # NEW is kept

    since = subscription.membership
    await hub.reconcile(subscription, [NEW], since)  # WALLET deleted elsewhere
    assert subscription.wallets.keys() == {"wal_2"}
    update = await subscription.next()
    assert update is not None and [b.wallet for b in update.removed] == [WALLET]
    assert update.joined == (NEW,)
    assert hub.subscriber_count() == 1
    hub.unsubscribe(subscription)
    assert hub.subscriber_count() == 0
    await hub.wallet_registered(WALLET)  # no stream of the customer left: nothing to do
