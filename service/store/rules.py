"""What an import row means against what is already registered (store-independent)."""

from __future__ import annotations

from service.domain import Wallet
from service.errors import ImportRejected
from service.records import WalletRow

__all__ = ["existing_wallet_for"]


def existing_wallet_for(
    row: WalletRow,
    row_number: int,
    tenant: str,
    by_id: Wallet | None,
    by_address: Wallet | None,
) -> Wallet | None:
    """The registered wallet ``row`` re-imports, or None when it must be created.

    ``by_id`` is the wallet registered under ``row.wallet_id`` in any tenant;
    ``by_address`` the one registered at (tenant, network, address).  A conflict
    raises ``ImportRejected`` naming ``row_number``.  The message for a taken
    wallet ID is the same whichever tenant holds it, and never shows its owner.
    """
    if by_id is not None:
        if (by_id.tenant, by_id.customer_id, by_id.network, by_id.address) == (
            tenant,
            row.customer_id,
            row.network,
            row.address,
        ):
            return by_id
        raise ImportRejected(
            f"wallet_id {row.wallet_id} is already registered to a different wallet",
            row=row_number,
        )
    if by_address is None:
        return None
    where = f"address {row.address} on network {row.network}"
    if by_address.customer_id != row.customer_id:
        raise ImportRejected(f"{where} is already registered to another customer", row=row_number)
    if row.wallet_id is not None:
        raise ImportRejected(
            f"{where} is already registered as wallet {by_address.wallet_id}", row=row_number
        )
    return by_address
