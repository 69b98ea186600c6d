"""The wallet registry use cases: import, list (paged), get and delete a customer's wallets.

Everything is scoped to the caller's tenant; another tenant's customer or
wallet is reported exactly like one that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime

from service.addresses import parse_address
from service.bounded_json import loads_bounded
from service.domain import Wallet, parse_customer_id, parse_wallet_id
from service.errors import CustomerNotFound, InvalidArgument, WalletNotFound
from service.ports import WalletDirectory
from service.records import WalletCursor

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "WalletPage", "WalletRegistry"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

# A token holds a customer ID and a wallet ID (at most 68 characters each) and a
# timestamp: under 300 characters of base64.  Anything longer was not made here.
_MAX_TOKEN_CHARS = 512

WalletPage = tuple[list[Wallet], str]
WalletDeleted = Callable[[Wallet], Awaitable[None]]
WalletRegistered = Callable[[Wallet], Awaitable[None]]


async def _nobody(wallet: Wallet) -> None:
    """No one to tell (a registry without watches)."""


class WalletRegistry:
    def __init__(
        self,
        directory: WalletDirectory,
        networks: Collection[str],
        on_wallet_deleted: WalletDeleted,
        on_wallet_registered: WalletRegistered = _nobody,
    ) -> None:
        """``on_wallet_registered`` hears of each wallet created (not of an idempotent
        repeat), after it is stored: the customer's watch streams take it in."""
        self._directory = directory
        self._networks = tuple(networks)
        self._on_wallet_deleted = on_wallet_deleted
        self._on_wallet_registered = on_wallet_registered

    async def import_wallet(
        self, tenant: str, customer_id: str, network: str, address: str
    ) -> tuple[Wallet, bool]:
        parse_customer_id(customer_id)
        if network not in self._networks:
            raise InvalidArgument(
                f"network {network[:40]!r} is not configured; known: {', '.join(self._networks)}",
                field="network",
            )
        wallet, created = await self._directory.register_wallet(
            tenant, customer_id, network, parse_address(address)
        )
        if created:
            await self._on_wallet_registered(wallet)
        return wallet, created

    async def list_wallets(
        self, tenant: str, customer_id: str, page_size: int, page_token: str
    ) -> WalletPage:
        parse_customer_id(customer_id)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(page_token, customer_id) if page_token else None
        wallets = await self._directory.list_wallets(
            tenant, customer_id, after=after, limit=size + 1
        )
        if not wallets and after is None:
            raise CustomerNotFound(customer_id)
        page, more = wallets[:size], len(wallets) > size
        return page, _encode_token(customer_id, page[-1]) if more else ""

    async def get_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        parse_customer_id(customer_id)
        wallet = await self._directory.get_wallet(tenant, parse_wallet_id(wallet_id))
        if wallet.customer_id != customer_id:
            raise WalletNotFound(wallet_id)
        return wallet

    async def delete_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        parse_customer_id(customer_id)
        wallet = await self._directory.delete_wallet(
            tenant, customer_id, parse_wallet_id(wallet_id)
        )
        await self._on_wallet_deleted(wallet)
        return wallet


def _encode_token(customer_id: str, last: Wallet) -> str:
    """Opaque to callers; bound to the customer so it cannot page someone else's list."""
    payload = {"c": customer_id, "t": last.created_at.isoformat(), "w": last.wallet_id}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_token(token: str, customer_id: str) -> WalletCursor:
    """The cursor in ``token``; any token this service did not make is INVALID_ARGUMENT.

    Tokens this service makes are a few hundred characters at most, so a longer
    one is refused before it is even decoded; the JSON inside is parsed with
    ``loads_bounded`` (deep nesting would crash the C decoder).  A forged time
    whose conversion to UTC leaves datetime's range (OverflowError) is caught
    here too, not left to surface as INTERNAL.
    """
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument("page_token is invalid", field="page_token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = loads_bounded(raw)
        created_at = datetime.fromisoformat(payload["t"])
        if created_at.tzinfo is None:
            raise ValueError("naive time")
        cursor = WalletCursor(created_at.astimezone(UTC), parse_wallet_id(payload["w"]))
        same_customer = payload["c"] == customer_id
    except (
        binascii.Error,
        ValueError,
        TypeError,
        KeyError,
        OverflowError,
        RecursionError,
        InvalidArgument,
    ):
        raise InvalidArgument("page_token is invalid", field="page_token") from None
    if not same_customer:
        raise InvalidArgument("page_token is invalid", field="page_token")
    return cursor
