"""Webhook storage on both backends (``backend``: SQLite and PostgreSQL): configs through
the use cases and the servicer, the emitter's subscribers and events, the outbox's due
events, retries and replays.  Signing and URL rules are in tests/unit/test_webhooks.py;
claims across replicas in tests/integration/test_store_backends.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp

from balances.v1 import webhooks_pb2 as pb
from service.api.tenancy import current_tenant
from service.api.webhooks_servicer import WebhooksServicer
from service.domain import WebhookPolicy
from service.errors import InvalidArgument, NotFound
from service.money import format_amount
from service.ports import WalletDirectory
from service.store.stores import Stores
from service.webhooks.emitter import WebhookEmitter
from service.webhooks.manage import WebhookManagement
from tests.support.resolvers import destinations
from tests.support.store_backends import BACKENDS, StoreBackend, store_backend
from tests.support.webhook_values import (
    ACME,
    ADDR_1,
    ADDR_2,
    ADDR_3,
    GLOBEX,
    block,
    native,
    snapshot_of,
    usdc,
)

aio = pytest.mark.asyncio(loop_scope="session")

T = TypeVar("T")

SETTINGS = WebhookPolicy(
    allow_http_hosts=("127.0.0.1:9000",), timeout_seconds=2.0, retry_schedule_seconds=(0.1, 0.2)
)
RULES = destinations(SETTINGS)  # names under example.com resolve to a public address
SECRET_RE = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return store_backend(request, tmp_path)


@pytest_asyncio.fixture(loop_scope="session")
async def stores(backend: StoreBackend) -> AsyncIterator[Stores]:
    async with await backend.open() as opened:
        yield opened


async def as_tenant(tenant: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call`` as the auth interceptor would: with the caller's tenant set."""

    async def run() -> T:
        current_tenant.set(tenant)
        return await call()

    return await asyncio.create_task(run())


async def configure(
    management: WebhookManagement, tenant: str, url: str = "https://hooks.example.com/in"
) -> str:
    """Create the tenant's config; return its secret."""
    change = await management.update_config(tenant, url, ["balance.updated"], False)
    assert change.created and change.secret_changed
    return change.config.secret


# ---------------------------------------------------------------- config use cases


@aio
async def test_secret_is_shown_on_create_and_rotate_only(stores: Stores) -> None:
    management = WebhookManagement(stores.webhooks, RULES)
    with pytest.raises(NotFound, match="no webhook is configured"):
        await management.get_config(ACME)
    with pytest.raises(InvalidArgument, match="url is required"):
        await management.update_config(ACME, "", [], False)

    created = await management.update_config(ACME, "https://a.example.com/h", [], False)
    assert created.created and created.secret_changed
    assert SECRET_RE.fullmatch(created.config.secret)
    assert created.config.events == ("balance.updated",)  # empty on create: every known type
    assert "whsec_" not in repr(created.config)

    changed = await management.update_config(ACME, "https://b.example.com/h", [], False)
    assert not changed.created and not changed.secret_changed
    assert changed.config.secret == created.config.secret
    assert changed.config.url == "https://b.example.com/h"
    assert changed.config.created_at == created.config.created_at
    assert changed.config.updated_at >= created.config.updated_at

    rotated = await management.update_config(ACME, "", [], True)
    assert rotated.secret_changed and not rotated.created
    assert rotated.config.secret != created.config.secret
    assert rotated.config.url == "https://b.example.com/h"  # empty url keeps it
    assert (await management.get_config(ACME)).secret == rotated.config.secret

    # Other tenants are untouched and unseen.
    with pytest.raises(NotFound):
        await management.get_config(GLOBEX)


@aio
async def test_bad_config_input_is_invalid_argument(stores: Stores) -> None:
    management = WebhookManagement(stores.webhooks, RULES)
    with pytest.raises(InvalidArgument, match=r"unknown event type 'balance\.deleted'"):
        await management.update_config(ACME, "https://a.example.com/h", ["balance.deleted"], False)
    with pytest.raises(InvalidArgument, match="must use https"):
        await management.update_config(ACME, "http://a.example.com/h", [], False)
    with pytest.raises(InvalidArgument, match="user name"):
        await management.update_config(ACME, "https://u:p@a.example.com/h", [], False)
    assert await stores.webhooks.webhook_config(ACME) is None
    with pytest.raises(InvalidArgument, match="time zone"):
        await management.replay(ACME, datetime(2024, 1, 1))
    with pytest.raises(InvalidArgument, match="tenant name"):
        await management.replay("Not A Tenant", datetime.now(UTC))


@aio
async def test_servicer_shows_secret_once_and_never_on_get(stores: Stores) -> None:
    servicer = WebhooksServicer(WebhookManagement(stores.webhooks, RULES))
    context: Any = None  # the servicer does not use its context
    created = await as_tenant(
        ACME,
        lambda: servicer.UpdateWebhookConfig(
            pb.UpdateWebhookConfigRequest(
                url="https://hooks.example.com/in", events=["balance.updated"]
            ),
            context,
        ),
    )
    assert created.created and SECRET_RE.fullmatch(created.secret)
    assert created.config.url == "https://hooks.example.com/in"
    assert list(created.config.events) == ["balance.updated"]
    assert created.config.create_time.seconds > 0

    got = await as_tenant(
        ACME, lambda: servicer.GetWebhookConfig(pb.GetWebhookConfigRequest(), context)
    )
    assert got.config == created.config
    assert created.secret not in str(got) and "whsec_" not in got.SerializeToString().decode(
        errors="replace"
    )

    same = await as_tenant(
        ACME,
        lambda: servicer.UpdateWebhookConfig(
            pb.UpdateWebhookConfigRequest(url="https://hooks.example.com/v2"), context
        ),
    )
    assert same.secret == "" and not same.created
    assert same.config.url == "https://hooks.example.com/v2"

    rotated = await as_tenant(
        ACME,
        lambda: servicer.UpdateWebhookConfig(
            pb.UpdateWebhookConfigRequest(rotate_secret=True), context
        ),
    )
    assert SECRET_RE.fullmatch(rotated.secret) and rotated.secret != created.secret
    assert (await stores.webhooks.webhook_config(ACME)).secret == rotated.secret  # type: ignore[union-attr]

    # Another tenant sees nothing of it.
    with pytest.raises(NotFound):
        await as_tenant(
            GLOBEX, lambda: servicer.GetWebhookConfig(pb.GetWebhookConfigRequest(), context)
        )

    with pytest.raises(InvalidArgument, match="since is required"):
        await as_tenant(
            ACME,
            lambda: servicer.ReplayWebhookEvents(pb.ReplayWebhookEventsRequest(), context),
        )
    since = Timestamp()
    since.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    replayed = await as_tenant(
        ACME,
        lambda: servicer.ReplayWebhookEvents(pb.ReplayWebhookEventsRequest(since=since), context),
    )
    assert replayed.requeued_count == 0


# ---------------------------------------------------------------- emitter and outbox


async def register(wallets: WalletDirectory, tenant: str, customer: str, address: str) -> str:
    wallet, _ = await wallets.register_wallet(tenant, customer, "polygon", address)
    return wallet.wallet_id


@aio
async def test_watched_addresses_are_the_subscribed_tenants_wallets(
    stores: Stores,
) -> None:
    management = WebhookManagement(stores.webhooks, RULES)
    emitter = WebhookEmitter(stores.webhooks)
    await register(stores.wallets, ACME, "cus_a", ADDR_1)
    await register(stores.wallets, ACME, "cus_a", ADDR_2)
    await register(stores.wallets, GLOBEX, "cus_g", ADDR_3)  # globex has no webhook config
    await stores.wallets.register_wallet(ACME, "cus_a", "ethereum", ADDR_3)
    assert await emitter.watched_addresses("polygon") == set()
    await configure(management, ACME)
    assert await emitter.watched_addresses("polygon") == {ADDR_1, ADDR_2}
    assert await emitter.watched_addresses("ethereum") == {ADDR_3}
    await configure(management, GLOBEX)
    assert await emitter.watched_addresses("polygon") == {ADDR_1, ADDR_2, ADDR_3}
    assert await emitter.watched_addresses("base") == set()


@aio
async def test_one_event_per_wallet_and_currency_with_exact_fields(
    stores: Stores,
) -> None:
    management = WebhookManagement(stores.webhooks, RULES)
    woken: list[int] = []
    created_at = datetime(2024, 1, 15, 10, 30, 0, 123000, tzinfo=UTC)
    emitter = WebhookEmitter(
        stores.webhooks, on_enqueued=lambda: woken.append(1), clock=lambda: created_at
    )
    alice = await register(stores.wallets, ACME, "cus_alice", ADDR_1)
    bob = await register(stores.wallets, ACME, "cus_bob", ADDR_2)
    await register(stores.wallets, GLOBEX, "cus_g", ADDR_3)  # no config: no events
    await configure(management, ACME)

    ref = block(7)
    changes = [
        usdc(ADDR_1, 1_250_500_000, 1_000_000_000),
        native(ADDR_1, 0, 1),
        usdc(ADDR_2, 0, 2**256 - 1),
        usdc(ADDR_3, 5, 6),
        usdc(ADDR_1, 3, 4, network="ethereum"),  # not this block's network: ignored
    ]
    await emitter.balances_changed(ref, changes, snapshot_of(ref))
    assert woken == [1]
    events = await stores.webhooks.webhook_events()
    assert [(e.wallet_id, e.currency) for e in events] == [
        (alice, "USDC"),
        (alice, "POL"),
        (bob, "USDC"),
    ]
    assert len({e.event_id for e in events}) == 3
    for event in events:
        assert re.fullmatch(r"msg_[0-9a-f]{32}", event.event_id)
        assert (event.status, event.attempts, event.tenant) == ("pending", 0, ACME)
        assert (event.block_number, event.block_hash) == (7, ref.hash)
    bodies = [json.loads(e.payload) for e in events]
    assert bodies[0] == {
        "type": "balance.updated",
        "data": {
            "wallet_id": alice,
            "customer_id": "cus_alice",
            "balance": "1000.00",
            "previous_balance": "1250.50",
            "currency": "USDC",
            "network": "polygon",
            "block_number": 7,
            "block_hash": ref.hash,
            "timestamp": datetime.fromtimestamp(ref.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "createdAt": 1705314600123,
    }
    assert list(bodies[0]) == ["type", "data", "createdAt"]
    assert (bodies[1]["data"]["balance"], bodies[1]["data"]["previous_balance"]) == (
        "0.000000000000000001",
        "0.00",
    )
    assert bodies[2]["data"]["balance"] == format_amount(2**256 - 1, 6)
    assert bodies[0]["data"]["timestamp"] == "2024-01-15T10:30:07Z"

    # The same block again (a follower re-emitting it) adds nothing.
    await emitter.balances_changed(ref, changes, snapshot_of(ref))
    assert len(await stores.webhooks.webhook_events()) == 3
    assert woken == [1]
    # A block with no subscribed wallet's change writes nothing and wakes nobody.
    await emitter.balances_changed(block(8), [usdc(ADDR_3, 6, 7)], snapshot_of(block(8)))
    assert len(await stores.webhooks.webhook_events()) == 3 and woken == [1]


@aio
async def test_two_tenants_with_the_same_address_both_get_events(
    stores: Stores,
) -> None:
    management = WebhookManagement(stores.webhooks, RULES)
    emitter = WebhookEmitter(stores.webhooks)
    acme_wallet = await register(stores.wallets, ACME, "cus_a", ADDR_1)
    globex_wallet = await register(stores.wallets, GLOBEX, "cus_g", ADDR_1)
    await configure(management, ACME)
    await configure(management, GLOBEX)
    ref = block(3)
    await emitter.balances_changed(ref, [usdc(ADDR_1, 0, 10**6)], snapshot_of(ref))
    events = await stores.webhooks.webhook_events()
    assert sorted((e.tenant, e.wallet_id) for e in events) == sorted(
        [(ACME, acme_wallet), (GLOBEX, globex_wallet)]
    )
    by_tenant = {e.tenant: json.loads(e.payload)["data"] for e in events}
    assert by_tenant[ACME]["customer_id"] == "cus_a"
    assert by_tenant[GLOBEX]["customer_id"] == "cus_g"
    assert [e.event_id for e in await stores.webhooks.webhook_events(ACME)] == [
        e.event_id for e in events if e.tenant == ACME
    ]


@aio
async def test_due_events_are_per_wallet_heads_in_order(stores: Stores) -> None:
    management = WebhookManagement(stores.webhooks, RULES)
    emitter = WebhookEmitter(stores.webhooks)
    one = await register(stores.wallets, ACME, "cus_a", ADDR_1)
    two = await register(stores.wallets, ACME, "cus_a", ADDR_2)
    await configure(management, ACME)
    for n in (1, 2, 3):
        await emitter.balances_changed(
            block(n), [usdc(ADDR_1, n - 1, n), usdc(ADDR_2, n - 1, n)], snapshot_of(block(n))
        )
    now = datetime.now(UTC) + timedelta(seconds=1)
    events = await stores.webhooks.webhook_events()
    due = await stores.webhooks.due_webhook_events(now, 10)
    assert [(d.wallet_id, d.event_id) for d in due] == [
        (one, events[0].event_id),
        (two, events[1].event_id),
    ]
    assert [d.wallet_id for d in await stores.webhooks.due_webhook_events(now, 10, {one})] == [two]
    assert await stores.webhooks.due_webhook_events(now, 1) == due[:1]
    # A retry later in time holds back that wallet's later events too.
    later = now + timedelta(seconds=60)
    await stores.webhooks.mark_webhook_retry(events[0].event_id, "HTTP 500", later)
    assert [d.wallet_id for d in await stores.webhooks.due_webhook_events(now, 10)] == [two]
    assert await stores.webhooks.next_webhook_attempt_at({two}) == later
    # Failing the head releases the next event of the wallet; delivered ones are done.
    await stores.webhooks.mark_webhook_failed(events[0].event_id, "HTTP 500")
    await stores.webhooks.mark_webhook_delivered(events[1].event_id, now)
    assert [d.event_id for d in await stores.webhooks.due_webhook_events(now, 10)] == [
        events[2].event_id,
        events[3].event_id,
    ]
    stored = {e.event_id: e for e in await stores.webhooks.webhook_events()}
    assert stored[events[0].event_id].status == "failed"
    assert stored[events[0].event_id].attempts == 2
    assert stored[events[1].event_id].status == "delivered"
    # Replay: failed and delivered go back to pending, attempts reset, same IDs, same order.
    since = events[0].created_at
    assert await management.replay(GLOBEX, since) == 0
    assert await management.replay(ACME, since + timedelta(hours=1)) == 0
    assert await management.replay(ACME, since) == 2
    replayed = {e.event_id: e for e in await stores.webhooks.webhook_events()}
    assert replayed[events[0].event_id].status == "pending"
    assert replayed[events[0].event_id].attempts == 0
    assert replayed[events[0].event_id].last_error is None
    assert [d.event_id for d in await stores.webhooks.due_webhook_events(now, 10)] == [
        events[0].event_id,
        events[1].event_id,
    ]
