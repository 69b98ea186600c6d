"""Webhook delivery against a fake outbox: what counts as an attempt, and what does not."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from service.domain import WebhookPolicy
from service.records import DueWebhookEvent
from service.webhooks.delivery import WebhookDelivery
from service.webhooks.signing import new_secret
from tests.support.resolvers import destinations

aio = pytest.mark.asyncio(loop_scope="session")

POLICY = WebhookPolicy(
    allow_http_hosts=(), timeout_seconds=1.0, retry_schedule_seconds=(0.01, 0.01)
)
RULES = destinations(POLICY)


@dataclass
class Outbox:
    """One wallet's queue in memory: the parts of ``WebhookStore`` delivery uses."""

    events: list[DueWebhookEvent]
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    fail_writes: bool = False

    def _pending(self, exclude: Collection[str]) -> list[DueWebhookEvent]:
        return [
            e
            for e in self.events
            if self.status.get(e.event_id, "pending") == "pending" and e.wallet_id not in exclude
        ][:1]

    async def due_webhook_events(
        self, now: datetime, limit: int, exclude_wallets: Collection[str] = ()
    ) -> list[DueWebhookEvent]:
        return [
            DueWebhookEvent(
                e.event_id,
                e.tenant,
                e.wallet_id,
                e.payload,
                len(self.errors.get(e.event_id, [])),
                e.url,
                e.secret,
            )
            for e in self._pending(exclude_wallets)[:limit]
        ]

    async def claim_due_webhook_events(
        self,
        now: datetime,
        limit: int,
        claimer: str,
        lease_seconds: float,
        exclude_wallets: Collection[str] = (),
    ) -> list[DueWebhookEvent]:
        # One worker here: its claims need no bookkeeping (the stores' tests cover claims).
        return await self.due_webhook_events(now, limit, exclude_wallets)

    async def renew_webhook_claims(self, claimer: str, now: datetime, lease_seconds: float) -> int:
        return 0

    async def release_webhook_claims(self, claimer: str) -> int:
        return 0

    async def next_webhook_attempt_at(
        self, exclude_wallets: Collection[str] = ()
    ) -> datetime | None:
        return datetime.now(UTC) if self._pending(exclude_wallets) else None

    def _write(self) -> None:
        if self.fail_writes:
            raise OSError("disk I/O error")

    async def mark_webhook_delivered(
        self, event_id: str, now: datetime, *, claimer: str | None = None
    ) -> bool:
        self._write()
        self.status[event_id] = "delivered"
        return True

    async def mark_webhook_retry(
        self, event_id: str, error: str, next_attempt_at: datetime, *, claimer: str | None = None
    ) -> bool:
        self._write()
        self.errors.setdefault(event_id, []).append(error)
        return True

    async def mark_webhook_failed(
        self, event_id: str, error: str, *, claimer: str | None = None
    ) -> bool:
        self._write()
        self.errors.setdefault(event_id, []).append(error)
        self.status[event_id] = "failed"
        return True


@dataclass
class Sender:
    """A ``WebhookSender`` that answers ``reply`` (or raises ``error``) and counts its sends."""

    reply: str | None = None
    error: Exception | None = None
    sent: list[str] = field(default_factory=list)

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        self.sent.append(headers["webhook-id"])
        if self.error is not None:
            raise self.error
        return self.reply


def event(secret: str) -> DueWebhookEvent:
    return DueWebhookEvent(
        "evt_1",
        "acme",
        "wal_1",
        '{"type":"balance.updated"}',
        0,
        "https://hooks.example.com/in",
        secret,
    )


async def until(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll a condition another task changes (it offers no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@aio
async def test_a_signing_failure_is_a_failed_attempt_not_a_recording_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bug 4: a ValueError from signing (a malformed stored secret) used to be logged as
    "recording failed", counted no attempt, and retried every poll interval forever."""
    caplog.set_level(logging.INFO, logger="service.webhooks")
    outbox = Outbox([event("not-a-webhook-secret")])
    sender = Sender()
    delivery = WebhookDelivery(outbox, sender, POLICY, destinations=RULES)
    await delivery.start()
    try:
        await until(lambda: outbox.status.get("evt_1") == "failed")
    finally:
        await delivery.aclose()
    # Every try counted (1 + len(retry schedule)), then given up; nothing was sent.
    assert outbox.errors["evt_1"] == ["signing failed (ValueError)"] * 3
    assert sender.sent == []
    assert "recording failed" not in caplog.text
    assert "not-a-webhook-secret" not in caplog.text


@aio
async def test_a_sender_that_raises_is_a_failed_attempt() -> None:
    outbox = Outbox([event(new_secret())])
    sender = Sender(error=RuntimeError("https://hooks.example.com/in?token=x"))
    delivery = WebhookDelivery(outbox, sender, POLICY, destinations=RULES)
    await delivery.start()
    try:
        await until(lambda: outbox.status.get("evt_1") == "failed")
    finally:
        await delivery.aclose()
    assert outbox.errors["evt_1"] == ["send failed (RuntimeError)"] * 3
    assert sender.sent == ["evt_1"] * 3


@aio
async def test_only_a_store_failure_is_recording_failed_and_counts_no_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = Outbox([event(new_secret())], fail_writes=True)
    sender = Sender()
    delivery = WebhookDelivery(
        outbox, sender, POLICY, destinations=RULES, poll_interval_seconds=0.05
    )
    await delivery.start()
    try:
        await until(lambda: len(sender.sent) >= 2)  # tried again after the poll interval
        outbox.fail_writes = False
        await until(lambda: outbox.status.get("evt_1") == "delivered")
    finally:
        await delivery.aclose()
    assert "evt_1" not in outbox.errors  # no attempt was counted as failed
    assert "webhook event evt_1 of tenant acme: recording failed" in caplog.text


@aio
async def test_start_and_aclose_are_idempotent() -> None:
    outbox = Outbox([])
    delivery = WebhookDelivery(outbox, Sender(), POLICY, destinations=RULES)
    await delivery.aclose()
    await delivery.start()
    await delivery.start()
    await delivery.aclose()
    await delivery.aclose()
