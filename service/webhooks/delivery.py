"""The worker that sends outbox events to receivers: signed, retried, in order per wallet.

At-least-once: an event is marked delivered only after a 2xx answer, so an
event in flight when the process dies is sent again (same ``webhook-id``) after
a restart.  One event per wallet is in flight at a time and a wallet's next
event waits until the earlier one is delivered or given up.  Any other answer
(a redirect included: they are not followed), a timeout, a connection error,
a destination the rules now refuse (``destinations.py``: checked here, and
address by address when the sender connects), or a failure to sign or send at
all is a failed attempt: the next try comes after
``retry_schedule_seconds[attempt - 1]`` ± jitter; after the last one the event
is marked failed.  Only a failure to *record* the outcome in the store is not
an attempt: it is logged, and the event is tried again after the poll interval.

Several workers (replicas, or a leader and its successor) may share one outbox:
each event is *claimed* before it is sent, with a short lease the worker renews
while the send lasts, so no two workers send one event at once; a worker that
dies leaves claims that expire within the lease, and the event is sent again
(same ``webhook-id``) by whoever claims it next; one that stops releases them.
A worker whose lease ran out and whose event was claimed by another cannot
record its outcome (the mark is refused and logged).

Nothing logged or stored names the receiver URL (its path may hold a token) or
the secret; errors are short summaries such as ``HTTP 500``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
from datetime import timedelta

from service.background import BackgroundLoop
from service.domain import WebhookPolicy
from service.errors import InvalidArgument
from service.ports import Clock, WebhookOutbox, WebhookSender, utc_now
from service.records import DueWebhookEvent
from service.webhooks.destinations import WebhookDestinations
from service.webhooks.signing import signed_headers

__all__ = ["CLAIM_LEASE_SECONDS", "WebhookDelivery"]

log = logging.getLogger(__name__)

# How long a claim outlives its claimer's last renewal (renewed every third of it while
# sends are in flight): how long a dead worker's events wait before others send them.
CLAIM_LEASE_SECONDS = 6.0


class WebhookDelivery:
    """Sends due outbox events until ``aclose``; ``wake`` after adding events.

    ``poll_interval_seconds`` bounds how long it sleeps when nothing is due, so
    events queued by another process (``balances webhooks replay``) are found.
    """

    def __init__(
        self,
        store: WebhookOutbox,
        sender: WebhookSender,
        policy: WebhookPolicy,
        *,
        destinations: WebhookDestinations,
        concurrency: int = 16,
        poll_interval_seconds: float = 5.0,
        jitter: float = 0.1,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        claimer: str | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        # Unique per process (and per worker in it): a restarted process is a new claimer.
        self.claimer = claimer or f"pid{os.getpid()}-{secrets.token_hex(6)}"
        self._lease = lease_seconds or CLAIM_LEASE_SECONDS
        self._store = store
        self._policy = policy
        self._destinations = destinations
        self._sender = sender
        self._concurrency = concurrency
        self._poll = poll_interval_seconds
        self._jitter = jitter
        self._clock = clock
        self._rng = rng or random.Random()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # wallet_id -> its send
        self._loop = BackgroundLoop("webhook-delivery", self._step, poll_interval_seconds)
        self._renewals = BackgroundLoop("webhook-claims", self._renew, self._lease / 3)
        self._started = False
        # Sends tried (delivered, failed) and events given up (dead); service.metrics_sampler.
        self.delivered = self.failed = self.dead = 0

    def wake(self) -> None:
        """New events are in the outbox (or one finished): look again now."""
        self._loop.wake()

    async def start(self) -> None:
        """Start sending (idempotent); pending events left by an earlier run are resumed."""
        self._started = True
        self._loop.start()
        self._renewals.start()

    async def aclose(self) -> None:
        """Stop: sends in flight are abandoned (they stay pending and are sent again, by
        any worker at once: the claims are released)."""
        # First the loop, so that it starts nothing new; then the sends.
        await self._loop.aclose()
        sends = [*self._in_flight.values()]
        for task in sends:
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        self._in_flight.clear()
        await self._renewals.aclose()
        if self._started:
            try:
                await self._store.release_webhook_claims(self.claimer)
            except Exception:  # the leases run out instead
                log.exception("webhook delivery: releasing its claims failed")

    async def _renew(self) -> None:
        """Keep the claims of the sends in flight alive (a dead worker's claims expire)."""
        if not self._in_flight:
            return
        try:
            await self._store.renew_webhook_claims(self.claimer, self._clock(), self._lease)
        except Exception:
            log.exception("webhook delivery: renewing its claims failed")

    async def _step(self) -> float:
        try:
            return await self._dispatch()
        except Exception:
            log.exception("webhook delivery: reading the outbox failed")
            return self._poll

    async def _dispatch(self) -> float:
        """Start sends for due events; return how long to sleep unless woken."""
        free = self._concurrency - len(self._in_flight)
        busy = set(self._in_flight)
        now = self._clock()
        due = (
            await self._store.claim_due_webhook_events(now, free, self.claimer, self._lease, busy)
            if free > 0
            else []
        )
        for event in due:
            task = asyncio.create_task(self._send(event), name=f"webhook {event.event_id}")
            self._in_flight[event.wallet_id] = task
        if len(self._in_flight) >= self._concurrency:
            return self._poll  # a finishing send wakes the loop
        next_at = await self._store.next_webhook_attempt_at(set(self._in_flight))
        if next_at is None:
            return self._poll
        return min(max((next_at - self._clock()).total_seconds(), 0.0), self._poll)

    async def _send(self, event: DueWebhookEvent) -> None:
        try:
            error = await self._attempt(event)
            try:
                await self._record(event, error)
            except Exception:
                log.exception("webhook event %s of tenant %s: recording failed", *_who(event))
                await asyncio.sleep(self._poll)  # do not spin on a broken store
        finally:
            self._in_flight.pop(event.wallet_id, None)
            self.wake()

    async def _attempt(self, event: DueWebhookEvent) -> str | None:
        """One try; None when the receiver answered 2xx, else why not (no URL, no secret).

        Whatever goes wrong here is the attempt's failure, counted and retried per schedule.
        """
        try:
            self._destinations.check_url(event.url)  # before any lookup or connection
        except InvalidArgument as exc:
            return f"url no longer allowed: {exc}"
        try:
            timestamp = int(self._clock().timestamp())
            headers = signed_headers(event.secret, event.event_id, timestamp, event.payload)
        except Exception as exc:  # a malformed stored secret: its text is not repeated
            return f"signing failed ({type(exc).__name__})"
        headers["Content-Type"] = "application/json"
        try:
            return await self._sender.send(event.url, event.payload.encode(), headers)
        except Exception as exc:  # the sender's bug; its text may name the URL
            return f"send failed ({type(exc).__name__})"

    async def _record(self, event: DueWebhookEvent, error: str | None) -> None:
        attempt = event.attempts + 1
        if error is None:
            if not await self._store.mark_webhook_delivered(
                event.event_id, self._clock(), claimer=self.claimer
            ):
                _claim_lost(event)
                return
            log.info("webhook event %s of tenant %s delivered (attempt %d)", *_who(event), attempt)
            self.delivered += 1
            return
        self.failed += 1
        schedule = self._policy.retry_schedule_seconds
        if attempt > len(schedule):
            if not await self._store.mark_webhook_failed(
                event.event_id, error, claimer=self.claimer
            ):
                _claim_lost(event)
                return
            self.dead += 1
            log.warning(
                "webhook event %s of tenant %s failed after %d attempts: %s",
                *_who(event),
                attempt,
                error,
            )
            return
        delay = schedule[attempt - 1] * (1 + self._rng.uniform(-self._jitter, self._jitter))
        if not await self._store.mark_webhook_retry(
            event.event_id, error, self._clock() + timedelta(seconds=delay), claimer=self.claimer
        ):
            _claim_lost(event)
            return
        log.info(
            "webhook event %s of tenant %s: attempt %d failed (%s); next in %.1fs",
            *_who(event),
            attempt,
            error,
            delay,
        )


def _claim_lost(event: DueWebhookEvent) -> None:
    log.warning(
        "webhook event %s of tenant %s: outcome not recorded, the claim was lost"
        " (the lease ran out and another worker claimed the event)",
        *_who(event),
    )


def _who(event: DueWebhookEvent) -> tuple[str, str]:
    return event.event_id, event.tenant
