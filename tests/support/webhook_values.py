"""Small domain values for the webhook tests: tenants, addresses, blocks and balance changes."""

from __future__ import annotations

from service.domain import BalanceChange, BlockRef, Snapshot

ACME = "acme"
GLOBEX = "globex"
ADDR_1 = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0x9876543210987654321098765432109876543210"
ADDR_3 = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


def block(number: int, network: str = "polygon", timestamp: int = 1_705_314_600) -> BlockRef:
    """Block ``number``: a made-up hash, a time one second later per block."""
    return BlockRef(network, number, "0x" + f"{number:064x}", timestamp + number)


def usdc(address: str, previous: int, current: int, network: str = "polygon") -> BalanceChange:
    return BalanceChange(network, address, "USDC", 6, previous, current)


def native(address: str, previous: int, current: int, network: str = "polygon") -> BalanceChange:
    return BalanceChange(network, address, "POL", 18, previous, current)


def snapshot_of(ref: BlockRef) -> Snapshot:
    """An empty snapshot read at ``ref``."""
    return Snapshot(ref.network, ref.number, ref.timestamp, {}, {})
