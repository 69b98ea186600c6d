"""A small world on local chains: tokens, price feeds, funded wallets, and its settings.

Used by ``balances demo`` and by the integration tests, so the demo is exactly
what the tests prove.  Everything here is dev tooling: nothing in the service
imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address

from service.devchain.deploy import (
    deploy_price_feed,
    deploy_token,
    mint,
    place_multicall3,
    set_native_balance,
)
from service.domain import Token
from service.settings import (
    NetworkSettings,
    PriceSettings,
    RestSettings,
    Settings,
    TokenSettings,
)

__all__ = [
    "DemoNetwork",
    "DemoWallet",
    "DemoWorld",
    "NetworkPlan",
    "demo_settings",
    "demo_tokens",
    "demo_wallets",
    "deploy_network",
    "fund_wallets",
    "write_wallet_file",
]

FEED_DECIMALS = 8
STABLE_DECIMALS = 6


@dataclass(frozen=True)
class NetworkPlan:
    """What to deploy on one chain."""

    name: str
    chain_id: int
    native_symbol: str
    native_price_cents: int  # the feed's answer in cents, e.g. 300000 for $3000.00


@dataclass
class DemoNetwork:
    """One deployed chain: where it is and what lives on it."""

    name: str
    chain_id: int
    rpc_url: str
    native_symbol: str
    multicall3: str
    tokens: dict[str, str]  # symbol -> token contract address
    feed: str  # native coin / USD price feed


@dataclass(frozen=True)
class DemoWallet:
    wallet_id: str
    customer_id: str
    network: str
    address: str
    raw: dict[str, int]  # symbol -> raw on-chain amount to fund


@dataclass
class DemoWorld:
    networks: dict[str, DemoNetwork] = field(default_factory=dict)
    wallets: list[DemoWallet] = field(default_factory=list)


POLYGON = NetworkPlan("polygon", 31337, "POL", 50)  # $0.50
ETHEREUM = NetworkPlan("ethereum", 31338, "ETH", 300000)  # $3000.00


async def deploy_network(plan: NetworkPlan, rpc_url: str) -> DemoNetwork:
    """Multicall3 at the canonical address, USDC and USDT (6 decimals), a native/USD feed."""
    multicall = await place_multicall3(rpc_url)
    usdc = await deploy_token(rpc_url, "USD Coin", "USDC", STABLE_DECIMALS)
    usdt = await deploy_token(rpc_url, "Tether USD", "USDT", STABLE_DECIMALS)
    feed = await deploy_price_feed(
        rpc_url,
        FEED_DECIMALS,
        plan.native_price_cents * 10 ** (FEED_DECIMALS - 2),
        f"{plan.native_symbol} / USD",
    )
    return DemoNetwork(
        plan.name,
        plan.chain_id,
        rpc_url,
        plan.native_symbol,
        multicall,
        {"USDC": usdc, "USDT": usdt},
        feed,
    )


def _address(n: int) -> str:
    """A deterministic, recognisable holder address (not a dev account: they hold gas money)."""
    return to_checksum_address(f"0x{n:040x}".replace("0x000", "0xd3e", 1))


def demo_wallets() -> list[DemoWallet]:
    """Two customers: alice on both networks, bob on polygon only."""
    return [
        DemoWallet(
            "wal_alice_polygon",
            "cus_alice",
            "polygon",
            _address(1),
            {"USDC": 1_250_500_000, "USDT": 0, "POL": 12 * 10**18 + 5 * 10**17},
        ),
        DemoWallet(
            "wal_alice_ethereum",
            "cus_alice",
            "ethereum",
            _address(2),
            {"USDC": 1_250_250_000, "USDT": 99_990_000, "ETH": 5 * 10**17},
        ),
        DemoWallet(
            "wal_bob_polygon",
            "cus_bob",
            "polygon",
            _address(3),
            {"USDC": 42_000_000, "USDT": 7_125_000, "POL": 0},
        ),
    ]


async def fund_wallets(world: DemoWorld, wallets: list[DemoWallet]) -> None:
    """Mint tokens and set native balances so each wallet holds exactly ``raw``."""
    for wallet in wallets:
        network = world.networks[wallet.network]
        for symbol, amount in wallet.raw.items():
            if symbol == network.native_symbol:
                await set_native_balance(network.rpc_url, wallet.address, amount)
            elif amount:
                await mint(network.rpc_url, network.tokens[symbol], wallet.address, amount)
        world.wallets.append(wallet)


def demo_tokens(network: DemoNetwork) -> tuple[Token, ...]:
    """USDC and USDT pegged at 1, and the native coin priced by the network's feed."""
    stable = PriceSettings(peg="1")
    tokens = [
        TokenSettings(symbol=symbol, decimals=STABLE_DECIMALS, address=address, price=stable)
        for symbol, address in network.tokens.items()
    ]
    native = PriceSettings(feed=network.feed, max_age_seconds=86400)
    tokens.append(
        TokenSettings(symbol=network.native_symbol, decimals=18, native=True, price=native)
    )
    return tuple(token.token for token in tokens)


def demo_settings(
    world: DemoWorld,
    *,
    listen: str,
    directory_path: Path,
    rest_listen: str | None = None,
    rpc_urls: Mapping[str, Sequence[str]] | None = None,
    cache_ttl_seconds: float = 30,
    network_changes: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Settings for the world (``rpc_urls`` overrides a network's URLs; ``network_changes``
    replaces fields of a network's settings, e.g. ``{"polygon": {"confirmations": 2}}``)."""
    networks = tuple(
        NetworkSettings(
            **{
                "name": network.name,
                "chain_id": network.chain_id,
                "rpc_urls": tuple((rpc_urls or {}).get(network.name, [network.rpc_url])),
                "multicall3": network.multicall3,
                "tokens": demo_tokens(network),
                **(network_changes or {}).get(network.name, {}),
            }
        )
        for network in world.networks.values()
    )
    return Settings(
        networks=networks,
        listen=listen,
        rest=RestSettings(listen=rest_listen) if rest_listen else None,
        grace_period_seconds=5,
        cache_ttl_seconds=cache_ttl_seconds,
        directory_path=directory_path,
        rpc_timeout_seconds=5,
    )


def write_wallet_file(path: Path, wallets: list[DemoWallet]) -> None:
    """The wallets as an import file for ``balances wallets import``."""
    path.write_text(
        json.dumps(
            {
                "wallets": [
                    {
                        "wallet_id": w.wallet_id,
                        "customer_id": w.customer_id,
                        "network": w.network,
                        "address": w.address,
                    }
                    for w in wallets
                ]
            },
            indent=2,
        )
    )
