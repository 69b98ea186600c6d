"""The wallet directory contract: what any store of registered wallets must offer."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from service.addresses import parse_address
from service.domain import Wallet, parse_customer_id, parse_wallet_id
from service.errors import InvalidArgument

__all__ = [
    "ApiKeyRecord",
    "ApiKeyStore",
    "WalletCursor",
    "WalletDirectory",
    "WalletRow",
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
