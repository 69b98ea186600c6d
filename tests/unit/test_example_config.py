"""config/example.toml through the configuration validator: every network's chain id, its
stablecoins' real contracts and decimals, and native coins priced by a feed.

The table below is the reviewed truth (Circle's and Tether's published addresses,
Chainlink's proxies); a change to the example that disagrees with it fails here,
before anyone starts a server against a mainnet with it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from eth_utils.address import to_checksum_address

from service.domain import FeedPrice, PegPrice
from service.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"

# network -> (chain id, {symbol: (address, decimals, onchain symbol or None)}, native coin)
EXPECTED = {
    "polygon": (
        137,
        {
            "USDC": ("0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359", 6, None),
            "USDT": ("0xc2132D05D31c914a87C6611C10748AEb04B58e8F", 6, "USDT0"),
        },
        "POL",
    ),
    "ethereum": (
        1,
        {
            "USDC": ("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", 6, None),
            "USDT": ("0xdAC17F958D2ee523a2206206994597C13D831ec7", 6, None),
        },
        "ETH",
    ),
    "base": (
        8453,
        {
            "USDC": ("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", 6, None),
            "USDT": ("0xfde4C96c8593536E31F229EA8f37b2ADa2699bb2", 6, None),
        },
        "ETH",
    ),
    "arbitrum": (
        42161,
        {
            "USDC": ("0xaf88d065e77c8cC2239327C5EDb3A432268e5831", 6, None),
            "USDT": ("0xFd086bC7CD5C481DCC9C85ebE478A1C0b69FCbb9", 6, "USD₮0"),
        },
        "ETH",
    ),
    "optimism": (
        10,
        {
            "USDC": ("0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85", 6, None),
            "USDT": ("0x94b008aA00579c1307B0EF2c499aD98a8ce58e58", 6, None),
        },
        "ETH",
    ),
    "bnb": (
        56,
        {  # Binance-Peg tokens: 18 decimals, where every other chain has 6
            "USDC": ("0x8AC76a51cc950d9822D68b83fE1Ad97B32Cd580d", 18, None),
            "USDT": ("0x55d398326f99059fF775485246999027B3197955", 18, None),
        },
        "BNB",
    ),
    "avalanche": (
        43114,
        {
            "USDC": ("0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E", 6, None),
            "USDT": ("0x9702230A8Ea53601f5cD2dc00fDBc13d4dF4A8c7", 6, "USDt"),
        },
        "AVAX",
    ),
}


def test_every_network_and_token_is_as_reviewed() -> None:
    settings = load_settings(EXAMPLE)
    assert [n.name for n in settings.networks] == list(EXPECTED)
    for network in settings.networks:
        chain_id, stablecoins, native = EXPECTED[network.name]
        assert network.chain_id == chain_id, network.name
        tokens = {t.currency: t for t in network.tokens}
        assert set(tokens) == {*stablecoins, native}, network.name
        for symbol, (address, decimals, onchain) in stablecoins.items():
            token = tokens[symbol]
            assert (token.address, token.decimals) == (address, decimals), (network.name, symbol)
            assert token.onchain_symbol == onchain, (network.name, symbol)
            assert token.price == PegPrice(1)
        coin = tokens[native]
        assert coin.address is None and coin.decimals == 18, network.name
        assert isinstance(coin.price, FeedPrice) and coin.price.max_age_seconds >= 3600
        assert all(url.startswith("https://") for url in network.rpc_urls), network.name
        # Not at the head (the L2s' sequencers and BNB Chain reorg, if rarely).
        assert network.confirmations > 0 or network.block_tag != "latest", network.name


def test_addresses_are_written_checksummed_and_distinct() -> None:
    """The file itself, not just the validator's output, carries EIP-55 addresses."""
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    seen: set[tuple[int, str]] = set()
    for network in raw["networks"]:
        for token in network["tokens"]:
            written = token.get("address") or token["price"]["feed"]
            assert written == to_checksum_address(written), (network["name"], token["symbol"])
            key = (network["chain_id"], written)
            assert key not in seen, key
            seen.add(key)
    assert len({n["chain_id"] for n in raw["networks"]}) == len(raw["networks"])


def test_bnb_chain_stablecoins_have_18_decimals() -> None:
    tokens = {t.currency: t for t in load_settings(EXAMPLE).network("bnb").tokens}
    assert tokens["USDC"].decimals == tokens["USDT"].decimals == 18
