"""What the Balances API should answer: the documented JSON shapes and the demo world's balances."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from service.devchain.world import DemoWorld
from service.money import format_amount

# The documented examples from DESIGN.md: keys and JSON types must match field for field.
DOCUMENTED_WALLET = {
    "walletId": "wal_abc123",
    "network": "polygon",
    "balances": [
        {"currency": "USDC", "amount": "1250.50", "decimals": 6},
        {"currency": "USDT", "amount": "0.00", "decimals": 6},
    ],
    "lastUpdated": "2024-01-15T10:30:00Z",
}
DOCUMENTED_CUSTOMER = {
    "customerId": "cus_abc123",
    "totalBalance": {"amount": "2500.75", "currency": "USD"},
    "wallets": [
        {
            "walletId": "wal_poly_001",
            "network": "polygon",
            "address": "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb",
            "balances": [{"currency": "USDC", "amount": "1250.50"}],
        }
    ],
}


def as_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON a REST client sees: lowerCamelCase, unpopulated fields printed."""
    return MessageToDict(message, always_print_fields_with_no_presence=True)


def assert_documented_shape(actual: Any, documented: Any, path: str = "$") -> None:
    """Every documented key is present with the documented JSON type (extra keys allowed)."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), path
        for key, value in documented.items():
            assert key in actual, f"{path}.{key} missing"
            assert_documented_shape(actual[key], value, f"{path}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and actual, path
        for i, item in enumerate(actual):
            assert_documented_shape(item, documented[0], f"{path}[{i}]")
    else:
        assert type(actual) is type(documented), f"{path}: {actual!r} vs {documented!r}"


def expected_balances(world: DemoWorld, wallet_id: str) -> list[dict[str, Any]]:
    """The JSON ``balances`` of ``wallet_id`` as funded in ``world``."""
    wallet = next(w for w in world.wallets if w.wallet_id == wallet_id)
    network = world.networks[wallet.network]
    symbols = [*network.tokens, network.native_symbol]
    decimals = {symbol: 6 for symbol in network.tokens} | {network.native_symbol: 18}
    return [
        {
            "currency": s,
            "amount": format_amount(wallet.raw.get(s, 0), decimals[s]),
            "decimals": decimals[s],
        }
        for s in symbols
    ]
