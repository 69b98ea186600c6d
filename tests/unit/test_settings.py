"""Settings built in Python: defaults from the types, rules in the types, TOML round trip."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from service.domain import FeedPrice, PegPrice, Token
from service.errors import ConfigError
from service.settings import (
    CANONICAL_MULTICALL3,
    NetworkSettings,
    PriceSettings,
    RestLimits,
    RestSettings,
    Settings,
    TokenSettings,
    WatchSettings,
    WebhookSettings,
    parse_settings,
)
from service.settings.render import render_settings

USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
FEED = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"
TOKENS = (
    Token("USDC", 6, USDC, PegPrice(Fraction(998, 1000))),
    Token("ETH", 18, None, FeedPrice(FEED, 600)),
)


def network(**changes: object) -> NetworkSettings:
    values: dict[str, object] = {
        "name": "ethereum",
        "chain_id": 1,
        "rpc_urls": ("https://node.example",),
        "tokens": TOKENS,
    }
    return NetworkSettings(**(values | changes))  # type: ignore[arg-type]


def test_defaults_live_in_the_types() -> None:
    settings = Settings(networks=(network(),))
    assert settings.listen == "127.0.0.1:50051"
    assert (settings.grace_period_seconds, settings.cache_ttl_seconds) == (10.0, 30.0)
    assert settings.directory_path == Path("balances.sqlite3")
    assert (settings.base_currency, settings.minor_unit_digits) == ("USD", 2)
    assert settings.rest is None and settings.tls is None
    assert settings.watch == WatchSettings(poll_interval_seconds=2.0)
    assert settings.webhooks.retry_schedule_seconds == (5.0, 30.0, 120.0, 600.0, 3600.0)
    net = settings.networks[0]
    assert (net.confirmations, net.block_tag, net.max_calls_per_batch) == (0, "latest", 1000)
    assert net.multicall3 == CANONICAL_MULTICALL3
    assert RestSettings().limits == RestLimits(1 << 20, 10.0, 30.0)


@pytest.mark.parametrize(
    ("build", "key", "reason"),
    [
        (lambda: Settings(networks=()), "networks", "at least one network"),
        (lambda: Settings(networks=(network(),), listen="x"), "listen", "HOST:PORT"),
        (
            lambda: Settings(networks=(network(),), cache_ttl_seconds=0),
            "cache_ttl_seconds",
            "positive",
        ),
        (lambda: Settings(networks=(network(), network())), "networks[1].name", "duplicate"),
        (lambda: network(rpc_urls=("ftp://x",)), "rpc_urls[0]", "http"),
        (lambda: network(confirmations=2, block_tag="safe"), "block_tag", "not both"),
        (lambda: network(tokens=TOKENS + TOKENS[:1]), "tokens[2].symbol", "duplicate"),
        (lambda: RestLimits(max_body_bytes=0), "max_body_bytes", "between 1 and 67108864"),
        (lambda: RestLimits(default_timeout_seconds=-1), "default_timeout_seconds", "positive"),
        (lambda: WebhookSettings(timeout_seconds=11), "timeout_seconds", "at most 10"),
        # Development receivers are host:port, never a bare host or another port form.
        (lambda: WebhookSettings(allow_http_hosts=("127.0.0.1",)), "allow_http_hosts[0]", "PORT"),
        (lambda: WebhookSettings(allow_http_hosts=("h:0",)), "allow_http_hosts[0]", "1 to 65535"),
        (lambda: WebhookSettings(allow_http_hosts=("127.1:80",)), "allow_http_hosts[0]", "IPv4"),
        (lambda: WebhookSettings(allow_http_hosts=("[::1:80",)), "allow_http_hosts[0]", "host"),
        (lambda: WebhookSettings(allow_http_hosts=("a/b:80",)), "allow_http_hosts[0]", "host"),
        (
            lambda: WebhookSettings(allow_http_hosts=("[::ffff:7f00:1]:80",)),
            "allow_http_hosts[0]",
            "canonical",
        ),
        # ... and never one of the service's own ports.
        (
            lambda: Settings(
                networks=(network(),),
                listen="0.0.0.0:50051",
                webhooks=WebhookSettings(allow_http_hosts=("localhost:50051",)),
            ),
            "webhooks.allow_http_hosts[0]",
            "own ports",
        ),
        (
            lambda: Settings(
                networks=(network(),),
                rest=RestSettings(listen="127.0.0.1:8080"),
                webhooks=WebhookSettings(allow_http_hosts=("127.0.0.1:9", "[::1]:8080")),
            ),
            "webhooks.allow_http_hosts[1]",
            "own ports",
        ),
        (lambda: PriceSettings(), "", "either peg"),
        (lambda: PriceSettings(peg="0"), "peg", "positive"),
        (
            lambda: TokenSettings(symbol="X", decimals=6, price=PriceSettings(peg="1")),
            "address",
            "either an address or native",
        ),
    ],
)
def test_rules_live_in_the_types(build: object, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_types_store_canonical_values() -> None:
    assert network(multicall3=CANONICAL_MULTICALL3.lower()).multicall3 == CANONICAL_MULTICALL3
    assert WebhookSettings(allow_http_hosts=("LocalHost:8099",)).allow_http_hosts == (
        "localhost:8099",
    )
    assert Settings(networks=(network(),), grace_period_seconds=3).grace_period_seconds == 3.0
    token = TokenSettings(
        symbol="USDC", decimals=6, address=USDC.lower(), price=PriceSettings(peg="1")
    )
    assert token.token == Token("USDC", 6, USDC, PegPrice(Fraction(1)))


def test_rendered_settings_load_back_equal(tmp_path: Path) -> None:
    settings = Settings(
        networks=(network(confirmations=3, ws_url="wss://node.example"), network(name="other")),
        listen="0.0.0.0:6000",
        rest=RestSettings(listen="127.0.0.1:0", limits=RestLimits(max_body_bytes=4096)),
        directory_path=tmp_path / "db.sqlite3",
        cache_ttl_seconds=45,
        watch=WatchSettings(poll_interval_seconds=0.5),
        webhooks=WebhookSettings(
            allow_http_hosts=("127.0.0.1:8099", "[::1]:8099"), retry_schedule_seconds=(0.1,)
        ),
    )
    text = render_settings(settings, comment="a test")
    assert text.startswith("# a test\n")
    assert parse_settings(tomllib.loads(text), base_dir=Path("/elsewhere")) == settings
    assert replace(settings, listen="127.0.0.1:1") != settings
