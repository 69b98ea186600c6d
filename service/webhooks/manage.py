"""The webhook use cases: a tenant's config (secret shown once), and replaying events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from service.domain import parse_tenant
from service.errors import InvalidArgument, WebhookConfigNotFound
from service.ports import Clock, WebhookStore, utc_now
from service.records import WebhookConfig, WebhookConfigChange
from service.webhooks.destinations import WebhookDestinations
from service.webhooks.payload import EVENT_TYPES
from service.webhooks.signing import new_secret

__all__ = ["WebhookManagement"]


class WebhookManagement:
    """Get and update a tenant's webhook config; queue past events for delivery again.

    ``wake_delivery`` (the in-process delivery worker's ``wake``) is called after
    a replay so the events go out at once; without it a running server's
    worker finds them at its next poll.
    """

    def __init__(
        self,
        store: WebhookStore,
        destinations: WebhookDestinations,
        *,
        wake_delivery: Callable[[], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._destinations = destinations
        self._wake_delivery = wake_delivery
        self._clock = clock

    async def get_config(self, tenant: str) -> WebhookConfig:
        """The tenant's config; ``WebhookConfigNotFound`` when it has none."""
        config = await self._store.webhook_config(tenant)
        if config is None:
            raise WebhookConfigNotFound()
        return config

    async def update_config(
        self, tenant: str, url: str, events: Sequence[str], rotate_secret: bool
    ) -> WebhookConfigChange:
        """Create or change the config; empty ``url``/``events`` keep the current ones.

        ``change.secret_changed`` says ``change.config.secret`` is new (created or
        rotated) and is to be shown to the caller, this once.  The URL must pass every
        destination rule, its host looked up (``destinations.py``).
        """
        checked_events = _check_events(events) if events else None  # before any lookup
        checked_url = None
        if url:
            await self._destinations.check(url)
            checked_url = url
        existing = await self._store.webhook_config(tenant)
        if existing is None:
            if checked_url is None:
                raise InvalidArgument(
                    "url is required to create the webhook configuration", field="url"
                )
            checked_events = checked_events or EVENT_TYPES
        return await self._store.save_webhook_config(
            tenant,
            url=checked_url,
            events=checked_events,
            new_secret=new_secret(),
            rotate_secret=rotate_secret,
        )

    async def replay(self, tenant: str | None, since: datetime) -> int:
        """Delivered and failed events created at or after ``since`` (of ``tenant``, or of
        every tenant) go back to pending with their attempts reset and the same IDs."""
        if tenant is not None:
            parse_tenant(tenant)
        if since.tzinfo is None:
            raise InvalidArgument(
                "since must carry a time zone (e.g. 2024-01-15T10:30:00Z)", field="since"
            )
        count = await self._store.requeue_webhook_events(tenant, since, self._clock())
        if count and self._wake_delivery is not None:
            self._wake_delivery()
        return count


def _check_events(events: Sequence[str]) -> tuple[str, ...]:
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        shown = ", ".join(repr(e[:40]) for e in unknown[:5])
        raise InvalidArgument(
            f"unknown event type {shown}; known: {', '.join(EVENT_TYPES)}", field="events"
        )
    return tuple(dict.fromkeys(events))
