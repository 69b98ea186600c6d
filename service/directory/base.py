"""The wallet directory contract: what any store of registered wallets must offer."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from service.addresses import parse_address
from service.domain import Wallet, parse_customer_id, parse_wallet_id
from service.errors import InvalidArgument

__all__ = [
    "ApiKeyRecord",
    "ApiKeyStore",
    "DueWebhookEvent",
    "NewWebhookEvent",
    "WalletCursor",
    "WalletDirectory",
    "WalletRow",
    "WebhookConfig",
    "WebhookConfigChange",
    "WebhookEventRecord",
    "WebhookEventStatus",
    "WebhookStore",
    "new_wallet_id",
]


def new_wallet_id() -> str:
    """A fresh random wallet ID: ``wal_`` + 24 lowercase hex digits (96 bits from ``secrets``)."""
    return "wal_" + secrets.token_hex(12)


@dataclass(frozen=True)
class WalletRow:
    """One wallet to register.  ``wallet_id`` None lets the directory assign one.

    A row is valid by construction: a malformed customer or wallet ID, an empty
    network or an address that is not in EIP-55 checksummed form raises
    ``InvalidArgument``.  Whether the network is configured is the caller's check.
    """

    customer_id: str
    network: str
    address: str
    wallet_id: str | None = None

    def __post_init__(self) -> None:
        parse_customer_id(self.customer_id)
        if self.wallet_id is not None:
            parse_wallet_id(self.wallet_id)
        if not self.network:
            raise InvalidArgument("network is empty")
        if parse_address(self.address) != self.address:
            raise InvalidArgument(f"address {self.address!r} is not in EIP-55 checksummed form")


class WalletDirectory(Protocol):
    """Where wallets are registered, scoped by tenant.  Wallet IDs are globally unique."""

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        """The tenant's wallet by ID.

        Raises ``InvalidArgument`` for a malformed ID and ``WalletNotFound`` when
        there is no such wallet *for this tenant* (another tenant's wallet gives
        the same error with the same message).
        """
        ...

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        """The customer's wallets ordered by (network, created_at, wallet_id).

        Raises ``InvalidArgument`` for a malformed ID and ``CustomerNotFound``
        when the customer has no wallets in this tenant.
        """
        ...

    async def import_wallets(self, tenant: str, rows: Sequence[WalletRow]) -> list[Wallet]:
        """Register ``rows`` atomically; return one wallet per row, in row order.

        Either every row is written or none.  Re-importing a registered wallet
        is idempotent; a wallet ID taken by another wallet (in any tenant), or an
        address already registered in this tenant to a different customer or
        under a different ID, raises ``ImportRejected(reason, row=N)`` (1-based).
        """
        ...

    async def register_wallet(
        self, tenant: str, customer_id: str, network: str, address: str
    ) -> tuple[Wallet, bool]:
        """Register one wallet (``address`` already checksummed); ``(wallet, created)``.

        Idempotent: the same (network, address) for the same customer returns
        the existing wallet with ``created=False``.  The same (network, address)
        registered to a different customer of this tenant raises
        ``AlreadyExists``.  Other tenants are invisible: they may hold the same
        address and nothing here reveals it.  Safe under concurrent calls: many
        tasks registering the same row yield one wallet.
        """
        ...

    async def list_wallets(
        self, tenant: str, customer_id: str, *, after: WalletCursor | None, limit: int
    ) -> list[Wallet]:
        """Up to ``limit`` of the customer's wallets ordered by (created_at, wallet_id),
        strictly after ``after`` when given.  An unknown customer gives ``[]``."""
        ...

    async def delete_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        """Remove the customer's wallet and return it as it was.

        Raises ``WalletNotFound`` when the wallet does not exist, belongs to
        another customer, or to another tenant (all the same error and message).
        """
        ...

    async def close(self) -> None:
        """Release the store.  The directory must not be used afterwards."""
        ...


@dataclass(frozen=True)
class WalletCursor:
    """Where a page of ``list_wallets`` ended: the last wallet's sort key."""

    created_at: datetime
    wallet_id: str


@dataclass(frozen=True)
class ApiKeyRecord:
    """What is known of an API key: never the key itself."""

    key_id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyStore(Protocol):
    """Where API key digests live (SHA-256 of the key; see service/auth/keys.py)."""

    async def add_key(self, key_id: str, tenant: str, digest: bytes) -> ApiKeyRecord:
        """Store a new key's digest for ``tenant``."""
        ...

    async def key_by_id(self, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
        """The record and stored digest of a key, revoked or not; None when unknown."""
        ...

    async def revoke_key(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked (idempotent); raises ``NotFound`` for an unknown id."""
        ...

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        """Every key (of ``tenant`` when given), ordered by (tenant, created_at)."""
        ...


WebhookEventStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True)
class WebhookConfig:
    """Where a tenant's webhooks go.  ``secret`` is the ``whsec_`` signing secret."""

    tenant: str
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class WebhookConfigChange:
    """The outcome of ``save_webhook_config``: the config as stored, and what happened."""

    config: WebhookConfig
    created: bool
    secret_changed: bool  # created, or rotated: the caller shows ``config.secret`` once


@dataclass(frozen=True)
class NewWebhookEvent:
    """One event to put in the outbox; ``payload`` is the exact body that will be signed."""

    event_id: str
    tenant: str
    wallet_id: str
    event_type: str
    network: str
    currency: str
    block_number: int
    block_hash: str
    payload: str
    created_at: datetime


@dataclass(frozen=True)
class DueWebhookEvent:
    """An outbox event ready to be sent now, with its tenant's current URL and secret."""

    event_id: str
    tenant: str
    wallet_id: str
    payload: str
    attempts: int  # sends already tried
    url: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class WebhookEventRecord:
    """An outbox event as stored (for inspection and tests)."""

    event_id: str
    tenant: str
    wallet_id: str
    event_type: str
    currency: str
    block_number: int
    block_hash: str
    payload: str
    created_at: datetime
    status: WebhookEventStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None


class WebhookStore(Protocol):
    """Webhook configs per tenant and the durable outbox of events to deliver.

    Outbox order is insertion order; one wallet's events are delivered in that
    order: an event is *due* only when no earlier event of its wallet is pending.
    """

    async def webhook_config(self, tenant: str) -> WebhookConfig | None:
        """The tenant's config, or None when it has none."""
        ...

    async def save_webhook_config(
        self,
        tenant: str,
        *,
        url: str | None,
        events: tuple[str, ...] | None,
        new_secret: str,
        rotate_secret: bool,
    ) -> WebhookConfigChange:
        """Create or update the tenant's config in one transaction.

        ``None`` keeps a field.  ``new_secret`` is stored when the config is
        created or ``rotate_secret`` is true.  Creating needs ``url`` and
        ``events`` (``InvalidArgument`` otherwise).
        """
        ...

    async def webhook_subscribers(
        self, network: str, event_type: str, addresses: Collection[str] | None = None
    ) -> list[Wallet]:
        """Wallets on ``network`` (only at ``addresses`` when given) of every tenant
        whose config subscribes to ``event_type``: one query."""
        ...

    async def enqueue_webhook_events(self, events: Sequence[NewWebhookEvent]) -> int:
        """Store ``events`` as pending, all in one transaction; return how many are new.

        An event for a (wallet, currency, block hash) already in the outbox is skipped.
        """
        ...

    async def due_webhook_events(
        self, now: datetime, limit: int, exclude_wallets: Collection[str] = ()
    ) -> list[DueWebhookEvent]:
        """Up to ``limit`` pending events whose time has come, each the earliest
        pending event of its wallet, oldest first; none of ``exclude_wallets``."""
        ...

    async def next_webhook_attempt_at(
        self, exclude_wallets: Collection[str] = ()
    ) -> datetime | None:
        """When the next event (of the kind ``due_webhook_events`` returns) is due."""
        ...

    async def mark_webhook_delivered(self, event_id: str, now: datetime) -> None:
        """Record a successful send (counts an attempt)."""
        ...

    async def mark_webhook_retry(
        self, event_id: str, error: str, next_attempt_at: datetime
    ) -> None:
        """Record a failed send and when to try again (counts an attempt)."""
        ...

    async def mark_webhook_failed(self, event_id: str, error: str) -> None:
        """Record the last failed send: the event is given up (counts an attempt)."""
        ...

    async def requeue_webhook_events(
        self, tenant: str | None, since: datetime, now: datetime
    ) -> int:
        """Delivered and failed events created at or after ``since`` (of ``tenant``
        when given) become pending again with no attempts; return how many."""
        ...

    async def webhook_events(self, tenant: str | None = None) -> list[WebhookEventRecord]:
        """Every outbox event (of ``tenant`` when given), in outbox order."""
        ...
