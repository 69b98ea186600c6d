"""Webhook delivery over real HTTP to a real receiver (aiohttp on 127.0.0.1), from a real
SQLite outbox: signatures (checked by the independent ``standardwebhooks`` package),
retries, order per wallet, failure, replay, redirects, timeouts, and kill -9."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from standardwebhooks import Webhook, WebhookVerificationError

from service import children
from service.domain import WebhookPolicy
from service.records import WebhookEventRecord
from service.store.sqlite import SqliteStores, open_sqlite_stores
from service.webhooks.delivery import WebhookDelivery
from service.webhooks.destinations import WebhookDestinations
from service.webhooks.emitter import WebhookEmitter
from service.webhooks.http_sender import HttpWebhookSender, SystemResolver
from service.webhooks.manage import WebhookManagement
from tests.support.cli import OFFLINE_CONFIG, balances_main
from tests.support.monitoring import collapsed
from tests.support.webhook_receiver import HOOK_PATH, Received, WebhookReceiver
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

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
# Templates: ``for_receiver`` makes the test's receiver their development receiver.
SHORT = WebhookPolicy(allow_http_hosts=(), timeout_seconds=2.0, retry_schedule_seconds=(0.1, 0.2))
PATIENT = WebhookPolicy(
    allow_http_hosts=(),
    timeout_seconds=2.0,
    retry_schedule_seconds=(0.1, 0.2, 0.4, 0.8, 1.6),
)


@pytest_asyncio.fixture(loop_scope="session")
async def stores(tmp_path: Path) -> AsyncIterator[SqliteStores]:
    async with await open_sqlite_stores(tmp_path / "wallets.sqlite3") as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as running:
        yield running


def for_receiver(policy: WebhookPolicy, receiver_url: str | None) -> WebhookPolicy:
    """``policy`` with the receiver at ``receiver_url`` (127.0.0.1 and its port) as its
    one development receiver; none for None."""
    port = urlsplit(receiver_url).port if receiver_url else None
    return replace(policy, allow_http_hosts=(f"127.0.0.1:{port}",) if port else ())


def parts(
    stores: SqliteStores, policy: WebhookPolicy
) -> tuple[WebhookDestinations, HttpWebhookSender]:
    """The destination rules (the system's resolver) and the real sender."""
    destinations = WebhookDestinations(policy, SystemResolver())
    return destinations, HttpWebhookSender(policy, destinations)


@asynccontextmanager
async def delivering(
    stores: SqliteStores, policy: WebhookPolicy, receiver: WebhookReceiver | None, **options: float
) -> AsyncIterator[WebhookDelivery]:
    policy = for_receiver(policy, receiver.url if receiver else None)
    destinations, sender = parts(stores, policy)
    delivery = WebhookDelivery(
        stores.webhooks,
        sender,
        policy,
        destinations=destinations,
        **options,  # type: ignore[arg-type]
    )
    await delivery.start()
    try:
        yield delivery
    finally:
        await delivery.aclose()
        await sender.aclose()


async def setup_tenant(
    stores: SqliteStores,
    tenant: str,
    url: str,
    addresses: list[str],
    settings: WebhookPolicy = SHORT,
) -> tuple[str, list[str]]:
    """Register ``addresses`` on polygon for one customer and point the tenant's webhook
    at ``url``; return (secret, wallet IDs)."""
    wallet_ids = []
    for address in addresses:
        wallet, _ = await stores.wallets.register_wallet(
            tenant, f"cus_{tenant}", "polygon", address
        )
        wallet_ids.append(wallet.wallet_id)
    policy = for_receiver(settings, url)
    change = await managing(stores, policy).update_config(tenant, url, [], False)
    return change.config.secret, wallet_ids


def managing(
    stores: SqliteStores, policy: WebhookPolicy, wake_delivery: Callable[[], None] | None = None
) -> WebhookManagement:
    return WebhookManagement(
        stores.webhooks,
        WebhookDestinations(policy, SystemResolver()),
        wake_delivery=wake_delivery,
    )


def verified(secret: str, received: Received) -> dict[str, object]:
    body: dict[str, object] = Webhook(secret).verify(received.text, received.headers)
    return body


async def until_settled(stores: SqliteStores, timeout: float = 15) -> list[WebhookEventRecord]:
    """Wait until no event is pending; return every event."""
    async with asyncio.timeout(timeout):
        while True:
            events = await stores.webhooks.webhook_events()
            if all(e.status != "pending" for e in events):
                return events
            await asyncio.sleep(0.02)


def per_wallet(received: list[Received]) -> dict[str, list[str]]:
    """Event IDs each wallet's requests carried, in arrival order."""
    found: dict[str, list[str]] = defaultdict(list)
    for r in received:
        found[json.loads(r.body)["data"]["wallet_id"]].append(r.event_id)
    return found


# ---------------------------------------------------------------- happy path


async def test_signed_payload_arrives_and_verifies(
    stores: SqliteStores, receiver: WebhookReceiver
) -> None:
    secret, (wallet_id,) = await setup_tenant(stores, ACME, receiver.url, [ADDR_1])
    async with delivering(stores, SHORT, receiver) as delivery:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        ref = block(11)
        started = time.monotonic()
        await emitter.balances_changed(
            ref, [usdc(ADDR_1, 1_250_500_000, 250_000), native(ADDR_1, 10**18, 0)], snapshot_of(ref)
        )
        await receiver.wait_until(lambda: len(receiver.received) == 2, timeout=5)
        latency = time.monotonic() - started
        events = await until_settled(stores)
    assert latency < 1.0, latency  # woken at once, not at the next poll
    assert [e.status for e in events] == ["delivered", "delivered"]
    assert [e.attempts for e in events] == [1, 1]
    assert receiver.ids_in_order() == [e.event_id for e in events]
    bodies = [verified(secret, r) for r in receiver.received]
    assert [r.text for r in receiver.received] == [e.payload for e in events]  # exact bytes
    assert bodies[0] == {
        "type": "balance.updated",
        "data": {
            "wallet_id": wallet_id,
            "customer_id": "cus_acme",
            "balance": "0.25",
            "previous_balance": "1250.50",
            "currency": "USDC",
            "network": "polygon",
            "block_number": 11,
            "block_hash": ref.hash,
            "timestamp": "2024-01-15T10:30:11Z",
        },
        "createdAt": bodies[0]["createdAt"],
    }
    assert abs(int(bodies[0]["createdAt"]) / 1000 - time.time()) < 30  # type: ignore[call-overload]
    assert bodies[1]["data"]["currency"] == "POL"  # type: ignore[index]
    assert (bodies[1]["data"]["balance"], bodies[1]["data"]["previous_balance"]) == ("0.00", "1.00")  # type: ignore[index]
    first = receiver.received[0].headers
    assert first["Content-Type"] == "application/json"
    assert abs(int(first["webhook-timestamp"]) - time.time()) < 30
    assert first["webhook-id"] == events[0].event_id


async def test_two_tenants_same_address_each_signed_with_its_own_secret(
    stores: SqliteStores, receiver: WebhookReceiver
) -> None:
    acme_secret, (acme_wallet,) = await setup_tenant(stores, ACME, receiver.url, [ADDR_1])
    globex_secret, (globex_wallet,) = await setup_tenant(stores, GLOBEX, receiver.url, [ADDR_1])
    async with delivering(stores, SHORT, receiver) as delivery:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        await emitter.balances_changed(block(5), [usdc(ADDR_1, 0, 7)], snapshot_of(block(5)))
        await receiver.wait_until(lambda: len(receiver.received) == 2, timeout=5)
        await until_settled(stores)
    by_wallet = {json.loads(r.body)["data"]["wallet_id"]: r for r in receiver.received}
    assert set(by_wallet) == {acme_wallet, globex_wallet}
    assert verified(acme_secret, by_wallet[acme_wallet])["type"] == "balance.updated"
    assert verified(globex_secret, by_wallet[globex_wallet])["type"] == "balance.updated"
    with pytest.raises(WebhookVerificationError):
        verified(globex_secret, by_wallet[acme_wallet])
    with pytest.raises(WebhookVerificationError):
        verified(acme_secret, by_wallet[globex_wallet])


# ---------------------------------------------------------------- receiver down


async def test_receiver_errors_for_a_while_then_all_arrive_in_order_per_wallet(
    stores: SqliteStores, receiver: WebhookReceiver
) -> None:
    secret, wallets = await setup_tenant(stores, ACME, receiver.url, [ADDR_1, ADDR_2], PATIENT)
    receiver.status = 500
    async with delivering(stores, PATIENT, receiver, poll_interval_seconds=0.5) as delivery:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        started = time.monotonic()
        for n in range(1, 6):  # five blocks, each changing both wallets
            await emitter.balances_changed(
                block(n), [usdc(ADDR_1, n - 1, n), usdc(ADDR_2, n - 1, n)], snapshot_of(block(n))
            )
        await asyncio.sleep(1.0)
        failures = len(receiver.received)
        receiver.status = 200
        events = await until_settled(stores)
        elapsed = time.monotonic() - started
    assert failures >= 4  # each wallet's head was tried and retried while the receiver failed
    assert all(e.status == "delivered" for e in events)
    assert set(receiver.acknowledged()) == {e.event_id for e in events}
    outbox_order = {w: [e.event_id for e in events if e.wallet_id == w] for w in wallets}
    for wallet, ids in per_wallet(receiver.received).items():
        # Every retry of one event carries its ID; no later event before an earlier one.
        assert collapsed(ids) == outbox_order[wallet]
    for r in receiver.received:
        verified(secret, r)
    heads = {outbox_order[w][0] for w in wallets}
    assert {r.event_id for r in receiver.received if r.status == 500} == heads
    attempts = {e.event_id: e.attempts for e in events}
    assert all(attempts[h] >= 3 for h in heads)
    print(
        f"\n[receiver 500 for 1s] {len(events)} events, {len(receiver.received)} requests"
        f" ({failures} refused), all delivered in {elapsed:.2f}s"
    )


async def test_receiver_not_listening_then_back(
    stores: SqliteStores, receiver: WebhookReceiver
) -> None:
    secret, _ = await setup_tenant(stores, ACME, receiver.url, [ADDR_1], PATIENT)
    await receiver.stop_listening()
    async with delivering(stores, PATIENT, receiver, poll_interval_seconds=0.5) as delivery:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        for n in (1, 2, 3):
            await emitter.balances_changed(
                block(n), [usdc(ADDR_1, n - 1, n)], snapshot_of(block(n))
            )
        await asyncio.sleep(0.5)
        refused = await stores.webhooks.webhook_events()
        await receiver.listen()
        events = await until_settled(stores)
    assert refused[0].status == "pending" and refused[0].attempts >= 2
    assert refused[0].last_error == "request failed (ClientConnectorError)"
    assert [e.status for e in events] == ["delivered"] * 3
    assert receiver.ids_in_order() == [e.event_id for e in events]  # nothing got through before
    assert [verified(secret, r)["data"]["balance"] for r in receiver.received] == [  # type: ignore[index]
        "0.000001",
        "0.000002",
        "0.000003",
    ]


async def test_after_the_last_retry_the_event_is_failed_then_replay_redelivers_it(
    stores: SqliteStores, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret, _ = await setup_tenant(stores, ACME, receiver.url, [ADDR_1])
    receiver.status = 500
    async with delivering(stores, SHORT, receiver, poll_interval_seconds=0.5) as delivery:
        management = managing(stores, SHORT, wake_delivery=delivery.wake)
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        await emitter.balances_changed(block(1), [usdc(ADDR_1, 0, 1)], snapshot_of(block(1)))
        (failed,) = await until_settled(stores)
        assert (failed.status, failed.attempts, failed.last_error) == ("failed", 3, "HTTP 500")
        assert [r.event_id for r in receiver.received] == [failed.event_id] * 3
        gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
        assert 0.09 <= gaps[0] < 0.5 and 0.18 <= gaps[1] < 0.6, gaps  # 0.1 s, 0.2 s ± 10 %
        for r in receiver.received:
            verified(secret, r)  # re-signed each time (fresh timestamp), same ID

        receiver.status = 200
        since = failed.created_at - timedelta(seconds=1)
        assert await management.replay(ACME, since) == 1
        (replayed,) = await until_settled(stores)
        assert (replayed.event_id, replayed.status, replayed.attempts) == (
            failed.event_id,
            "delivered",
            1,
        )
        assert receiver.received[-1].event_id == failed.event_id
        assert receiver.received[-1].body == receiver.received[0].body

        # Delivered events can be replayed too (a receiver that lost its data).
        assert await management.replay(None, since) == 1
        await receiver.wait_until(lambda: len(receiver.received) == 5, timeout=5)
        (again,) = await until_settled(stores)
        assert again.status == "delivered" and receiver.received[-1].event_id == failed.event_id
    assert len(receiver.received) == 5
    # Nothing logged the secret or the receiver URL's path (which may hold a token).
    assert caplog.records
    assert secret not in caplog.text
    assert secret.removeprefix("whsec_") not in caplog.text
    assert HOOK_PATH not in caplog.text
    assert "HTTP 500" in caplog.text


async def test_cli_replay_requeues_and_a_running_worker_delivers(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG)
    stores = await open_sqlite_stores(tmp_path / "wallets.sqlite3")
    try:
        await setup_tenant(stores, ACME, receiver.url, [ADDR_1])
        await setup_tenant(stores, GLOBEX, receiver.url, [ADDR_2])
        async with delivering(stores, SHORT, receiver, poll_interval_seconds=0.2) as delivery:
            emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
            await emitter.balances_changed(
                block(1), [usdc(ADDR_1, 0, 1), usdc(ADDR_2, 0, 1)], snapshot_of(block(1))
            )
            events = await until_settled(stores)
            await receiver.wait_until(lambda: len(receiver.received) == 2)
            since = (events[0].created_at - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            code, stdout, stderr = await asyncio.to_thread(
                balances_main, "webhooks", "replay", "--since", since, "--tenant", ACME,
                "--config", str(config), cwd=tmp_path,
            )  # fmt: skip
            assert code == 0, stderr
            assert stdout.startswith(f"requeued 1 webhook events of tenant {ACME} created since")
            # Another connection changed the outbox: the worker finds it at its next poll.
            await receiver.wait_until(lambda: len(receiver.received) == 3, timeout=5)
            await until_settled(stores)
        acme_event = next(e for e in events if e.tenant == ACME)
        assert receiver.received[-1].event_id == acme_event.event_id
        code, _, stderr = balances_main(
            "webhooks", "replay", "--since", "yesterday", "--config", str(config), cwd=tmp_path
        )
        assert code == 1 and "not an ISO 8601 time" in stderr and "Traceback" not in stderr
        code, _, stderr = balances_main(
            "webhooks", "replay", "--since", "2024-01-01T00:00:00", "--config", str(config),
            cwd=tmp_path,
        )  # fmt: skip
        assert code == 1 and "time zone" in stderr
    finally:
        await stores.aclose()


# ---------------------------------------------------------------- URL rules at send time


async def test_redirects_are_not_followed_and_count_as_failures(
    stores: SqliteStores, receiver: WebhookReceiver
) -> None:
    await setup_tenant(stores, ACME, receiver.url, [ADDR_1])
    receiver.status = 302
    async with delivering(stores, SHORT, receiver) as delivery:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        await emitter.balances_changed(block(1), [usdc(ADDR_1, 0, 1)], snapshot_of(block(1)))
        (event,) = await until_settled(stores)
    assert (event.status, event.attempts, event.last_error) == ("failed", 3, "HTTP 302")
    assert receiver.redirect_target_hits == 0
    assert len(receiver.received) == 3


async def test_slow_receiver_times_out(stores: SqliteStores, receiver: WebhookReceiver) -> None:
    settings = WebhookPolicy((), timeout_seconds=0.2, retry_schedule_seconds=(0.1,))
    await setup_tenant(stores, ACME, receiver.url, [ADDR_1], settings)
    receiver.delay = 1.0
    async with delivering(stores, settings, receiver) as delivery:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        started = time.monotonic()
        await emitter.balances_changed(block(1), [usdc(ADDR_1, 0, 1)], snapshot_of(block(1)))
        (event,) = await until_settled(stores)
        elapsed = time.monotonic() - started
    assert (event.status, event.attempts) == ("failed", 2)
    assert event.last_error == "no answer within 0.2s"
    assert elapsed < 1.5


async def test_http_url_no_longer_allowed_fails_without_sending(
    stores: SqliteStores, receiver: WebhookReceiver
) -> None:
    await setup_tenant(stores, ACME, receiver.url, [ADDR_1])
    stricter = WebhookPolicy((), timeout_seconds=1.0, retry_schedule_seconds=(0.1,))
    async with delivering(stores, stricter, None) as delivery:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        await emitter.balances_changed(block(1), [usdc(ADDR_1, 0, 1)], snapshot_of(block(1)))
        (event,) = await until_settled(stores)
    assert event.status == "failed" and event.last_error is not None
    assert event.last_error.startswith("url no longer allowed: url must use https")
    assert receiver.received == []


# ---------------------------------------------------------------- kill -9


async def start_worker(db_path: Path, receiver: WebhookReceiver) -> asyncio.subprocess.Process:
    process = await children.create_subprocess_exec(
        sys.executable, "-m", "tests.support.webhook_worker", str(db_path), str(receiver.port),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert process.stdout is not None
    async with asyncio.timeout(20):
        assert (await process.stdout.readline()).strip() == b"ready"
    return process


async def test_kill_9_with_events_pending_then_restart_delivers_all_with_stable_ids(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    db_path = tmp_path / "wallets.sqlite3"
    stores = await open_sqlite_stores(db_path)
    addresses = [ADDR_1, ADDR_2, ADDR_3] + [f"0x{i:040x}" for i in range(1, 6)]
    from service.addresses import parse_address

    addresses = [parse_address(a) for a in addresses]
    try:
        secret, wallets = await setup_tenant(stores, ACME, receiver.url, addresses)
        emitter = WebhookEmitter(stores.webhooks)
        for n in (1, 2, 3):  # 8 wallets x 2 currencies x 3 blocks = 48 events
            changes = [usdc(a, n - 1, n) for a in addresses] + [
                native(a, n - 1, n) for a in addresses
            ]
            await emitter.balances_changed(block(n), changes, snapshot_of(block(n)))
        outbox = await stores.webhooks.webhook_events()
        assert len(outbox) == 48

        receiver.delay = 0.15  # slow enough that sends are in flight when the worker dies
        worker = await start_worker(db_path, receiver)
        try:
            await receiver.wait_until(lambda: len(receiver.received) >= 10, timeout=20)
        finally:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        assert worker.returncode == -signal.SIGKILL
        before_restart = len(receiver.received)
        await asyncio.sleep(0.3)  # requests the dead worker had sent finish at the receiver
        pending = [e for e in await stores.webhooks.webhook_events() if e.status == "pending"]
        assert pending, "the kill came after everything was delivered"

        started = time.monotonic()
        worker = await start_worker(db_path, receiver)
        try:
            events = await until_settled(stores, timeout=30)
        finally:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        elapsed = time.monotonic() - started
    finally:
        await stores.aclose()

    assert all(e.status == "delivered" for e in events)
    outbox_ids = [e.event_id for e in outbox]
    assert [e.event_id for e in events] == outbox_ids  # same IDs as first stored
    received_ids = receiver.ids_in_order()
    assert set(received_ids) == set(outbox_ids)
    # None twice with different IDs: one ID per (wallet, currency, block), one body per ID.
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for r in receiver.received:
        by_id[r.event_id].add(r.body)
    assert all(len(bodies) == 1 for bodies in by_id.values())
    keys = {
        (d["wallet_id"], d["currency"], d["block_number"])
        for d in (json.loads(next(iter(b)))["data"] for b in by_id.values())
    }
    assert len(keys) == len(by_id) == 48
    for r in receiver.received:
        verified(secret, r)
    outbox_order = {w: [e.event_id for e in outbox if e.wallet_id == w] for w in wallets}
    for wallet, ids in per_wallet(receiver.received).items():
        assert collapsed(ids) == outbox_order[wallet]
    duplicates = len(received_ids) - len(set(received_ids))
    print(
        f"\n[kill -9] 48 events; {before_restart} requests before the kill,"
        f" {len(pending)} pending at restart, all delivered {elapsed:.2f}s after restart;"
        f" {len(received_ids)} requests in all, {duplicates} resent with the same ID"
    )


async def test_aclose_with_sends_in_flight_returns_promptly_and_keeps_them_pending(
    stores: SqliteStores, receiver: WebhookReceiver
) -> None:
    await setup_tenant(stores, ACME, receiver.url, [ADDR_1, ADDR_2, ADDR_3])
    receiver.delay = 0.5
    emitter = WebhookEmitter(stores.webhooks)
    changes = [usdc(a, 0, 1) for a in (ADDR_1, ADDR_2, ADDR_3)]
    await emitter.balances_changed(block(1), changes, snapshot_of(block(1)))
    for _ in range(5):  # the race between cancelled sends waking the loop and its cancel
        policy = for_receiver(SHORT, receiver.url)
        destinations, sender = parts(stores, policy)
        delivery = WebhookDelivery(stores.webhooks, sender, policy, destinations=destinations)
        await delivery.start()
        arrived = receiver.arrived
        await receiver.wait_until(lambda n=arrived: receiver.arrived >= n + 3, timeout=5)  # type: ignore[misc]
        async with asyncio.timeout(2):
            await delivery.aclose()
        await sender.aclose()
    events = await stores.webhooks.webhook_events()
    assert [e.status for e in events] == ["pending"] * 3  # never answered: sent again later
    assert [e.attempts for e in events] == [0, 0, 0]
