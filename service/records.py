"""What the stores keep: wallet rows, API key records, webhook configs and outbox events."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from service.addresses import parse_address
from service.domain import parse_customer_id, parse_wallet_id
from service.errors import InvalidArgument

__all__ = [
    "ApiKeyRecord",
    "DueWebhookEvent",
    "NewWebhookEvent",
    "WalletCursor",
    "WalletRow",
    "WebhookConfig",
    "WebhookConfigChange",
    "WebhookEventRecord",
    "WebhookEventStatus",
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
            raise InvalidArgument("network is empty", field="network")
        if parse_address(self.address) != self.address:
            raise InvalidArgument(
                f"address {self.address!r} is not in EIP-55 checksummed form", field="address"
            )


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
