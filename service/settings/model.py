"""The settings types: frozen dataclasses that hold each default and check each rule.

Each setting's default is its field's default and its rule is in its class's
``__post_init__``, so ``Settings(networks=...)`` built in Python is exactly as
valid as one loaded from TOML.  A broken rule raises ``ConfigError`` whose key
is the field's path relative to the class (``tokens[2].symbol``); the TOML
loader prefixes the path of the table it came from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from service.addresses import parse_address
from service.checks import check_int_between, check_listen, normalise, positive_seconds
from service.domain import FeedPrice, PegPrice, PriceSource, ReadDepth, Token, WebhookPolicy
from service.errors import ConfigError, InvalidArgument
from service.gateway.limits import RestLimits
from service.settings.tls import TlsSettings

__all__ = [
    "BLOCK_TAGS",
    "CANONICAL_MULTICALL3",
    "BlockTag",
    "NetworkSettings",
    "PriceSettings",
    "RestSettings",
    "Settings",
    "TokenSettings",
    "WatchSettings",
    "WebhookSettings",
]

CANONICAL_MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
BlockTag = Literal["latest", "safe", "finalized"]
BLOCK_TAGS: tuple[BlockTag, ...] = ("latest", "safe", "finalized")
_NETWORK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SYMBOL = re.compile(r"[A-Za-z0-9.]{1,16}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL = re.compile(r"\d+(\.\d+)?")
_MAX_RETRY_DELAY = 86400
_MAX_WEBHOOK_TIMEOUT = 10  # the public docs' bound


@dataclass(frozen=True)
class PriceSettings:
    """A token's price: a fixed ``peg`` (a decimal string) or a Chainlink-style ``feed``."""

    peg: str | None = None
    feed: str | None = None
    max_age_seconds: int = 3600  # feeds only: an older answer is no price

    def __post_init__(self) -> None:
        if self.feed is not None:
            normalise(self, "feed", _address("feed", self.feed))
        if (self.peg is None) == (self.feed is None):
            raise ConfigError("", 'give either peg = "1" or feed = "0x..."')
        if self.peg is not None:
            if not isinstance(self.peg, str) or not _DECIMAL.fullmatch(self.peg):
                raise ConfigError(
                    "peg", 'must be a decimal string like "1" or "0.998" (never a float)'
                )
            if Fraction(self.peg) <= 0:
                raise ConfigError("peg", "must be a positive price")
        elif self.max_age_seconds <= 0:
            raise ConfigError("max_age_seconds", "must be a positive integer")

    @property
    def source(self) -> PriceSource:
        if self.feed is not None:
            return FeedPrice(address=self.feed, max_age_seconds=self.max_age_seconds)
        assert self.peg is not None
        return PegPrice(Fraction(self.peg))


@dataclass(frozen=True, kw_only=True)
class TokenSettings:
    """A currency on one network: an ERC-20 at ``address``, or the ``native`` coin."""

    symbol: str
    decimals: int
    price: PriceSettings
    address: str | None = None
    native: bool = False

    def __post_init__(self) -> None:
        if not _SYMBOL.fullmatch(self.symbol):
            raise ConfigError("symbol", "must be 1-16 letters, digits or '.'")
        check_int_between("decimals", self.decimals, 0, 255)
        if self.address is not None:
            normalise(self, "address", _address("address", self.address))
        if self.native == (self.address is not None):
            raise ConfigError("address", "give either an address or native = true")

    @property
    def token(self) -> Token:
        """The domain value the chain reader and pricing use."""
        return Token(self.symbol, self.decimals, self.address, self.price.source)


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    """One EVM network: where to read it, at which block, and which tokens it holds."""

    name: str
    chain_id: int
    rpc_urls: tuple[str, ...]
    tokens: tuple[Token, ...]
    confirmations: int = 0
    block_tag: BlockTag = "latest"
    multicall3: str = CANONICAL_MULTICALL3
    max_calls_per_batch: int = 500
    ws_url: str | None = None  # when set, the block follower subscribes to newHeads

    def __post_init__(self) -> None:
        if not _NETWORK_NAME.fullmatch(self.name):
            raise ConfigError("name", "must be lowercase letters, digits, '-' or '_'")
        if self.chain_id <= 0:
            raise ConfigError("chain_id", "must be a positive integer")
        if not self.rpc_urls:
            raise ConfigError("rpc_urls", "must list at least one URL")
        for i, url in enumerate(self.rpc_urls):
            _check_url(f"rpc_urls[{i}]", url)
        if self.confirmations < 0:
            raise ConfigError("confirmations", "must be 0 or more")
        if self.block_tag not in BLOCK_TAGS:
            raise ConfigError("block_tag", f"must be one of {', '.join(BLOCK_TAGS)}")
        if self.block_tag != "latest" and self.confirmations:
            raise ConfigError("block_tag", "set either confirmations or a block_tag, not both")
        normalise(self, "multicall3", _address("multicall3", self.multicall3))
        if self.ws_url is not None:
            _check_url("ws_url", self.ws_url, schemes=("ws", "wss"))
        check_int_between("max_calls_per_batch", self.max_calls_per_batch, 3, 1000)
        if not self.tokens:
            raise ConfigError("tokens", "at least one token is required")
        symbols = [t.currency for t in self.tokens]
        for i, symbol in enumerate(symbols):
            if symbol in symbols[:i]:
                raise ConfigError(f"tokens[{i}].symbol", f"duplicate symbol {symbol!r}")
        if sum(t.is_native for t in self.tokens) > 1:
            raise ConfigError("tokens", "at most one token may be native")

    @property
    def read_depth(self) -> ReadDepth:
        """Which block the chain reader and the follower read."""
        return ReadDepth(self.confirmations, self.block_tag)


@dataclass(frozen=True)
class RestSettings:
    """The REST shim served beside gRPC (the ``[rest]`` table; absent: gRPC only)."""

    listen: str = "127.0.0.1:8080"
    limits: RestLimits = field(default_factory=RestLimits)
    tls: TlsSettings | None = None  # HTTPS; client certificates are a gRPC-only feature

    def __post_init__(self) -> None:
        check_listen("listen", self.listen)


@dataclass(frozen=True)
class WatchSettings:
    """Block followers (the ``[watch]`` table)."""

    poll_interval_seconds: float = 2.0

    def __post_init__(self) -> None:
        normalise(
            self,
            "poll_interval_seconds",
            positive_seconds("poll_interval_seconds", self.poll_interval_seconds),
        )


@dataclass(frozen=True)
class WebhookSettings:
    """``balance.updated`` delivery (the ``[webhooks]`` table)."""

    # Plain http is refused except to these hosts (local receivers, tests).
    allow_http_hosts: tuple[str, ...] = ()
    timeout_seconds: float = 10.0
    # Delay before each retry; after the last one fails the event is marked failed.
    retry_schedule_seconds: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 3600.0)

    def __post_init__(self) -> None:
        for i, host in enumerate(self.allow_http_hosts):
            if not isinstance(host, str) or not host or "/" in host or ":" in host:
                raise ConfigError(f"allow_http_hosts[{i}]", "must be a host name")
        normalise(self, "allow_http_hosts", tuple(h.lower() for h in self.allow_http_hosts))
        for i, delay in enumerate(self.retry_schedule_seconds):
            if (
                isinstance(delay, bool)
                or not isinstance(delay, int | float)
                or not (0 < delay <= _MAX_RETRY_DELAY and math.isfinite(delay))
            ):
                raise ConfigError(
                    f"retry_schedule_seconds[{i}]", f"must be 0 < seconds <= {_MAX_RETRY_DELAY}"
                )
        normalise(
            self, "retry_schedule_seconds", tuple(float(d) for d in self.retry_schedule_seconds)
        )
        timeout = positive_seconds("timeout_seconds", self.timeout_seconds)
        if timeout > _MAX_WEBHOOK_TIMEOUT:
            raise ConfigError(
                "timeout_seconds",
                f"must be at most {_MAX_WEBHOOK_TIMEOUT} (the public docs' bound)",
            )
        normalise(self, "timeout_seconds", timeout)

    @property
    def policy(self) -> WebhookPolicy:
        """What webhook delivery and management take."""
        return WebhookPolicy(
            self.allow_http_hosts, self.timeout_seconds, self.retry_schedule_seconds
        )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service needs to start."""

    networks: tuple[NetworkSettings, ...]
    listen: str = "127.0.0.1:50051"
    tls: TlsSettings | None = None  # gRPC over TLS (mTLS with client_ca_file)
    rest: RestSettings | None = None  # None: gRPC only
    grace_period_seconds: float = 10.0
    cache_ttl_seconds: float = 30.0
    directory_path: Path = Path("balances.sqlite3")
    rpc_timeout_seconds: float = 10.0
    base_currency: str = "USD"
    minor_unit_digits: int = 2
    watch: WatchSettings = field(default_factory=WatchSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    def __post_init__(self) -> None:
        check_listen("listen", self.listen)
        for name in ("grace_period_seconds", "cache_ttl_seconds", "rpc_timeout_seconds"):
            normalise(self, name, positive_seconds(name, getattr(self, name)))
        if not _CURRENCY.fullmatch(self.base_currency):
            raise ConfigError("base_currency", "must be a 3-letter ISO 4217 code like USD")
        check_int_between("minor_unit_digits", self.minor_unit_digits, 0, 6)
        if not self.networks:
            raise ConfigError("networks", "at least one network is required")
        names = [n.name for n in self.networks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"networks[{i}].name", f"duplicate network name {name!r}")

    def network(self, name: str) -> NetworkSettings:
        return next(n for n in self.networks if n.name == name)


def _address(key: str, value: str) -> str:
    try:
        return parse_address(value)
    except InvalidArgument as exc:
        raise ConfigError(key, str(exc)) from exc


def _check_url(key: str, url: object, schemes: tuple[str, ...] = ("http", "https")) -> None:
    if not isinstance(url, str):
        raise ConfigError(key, "must be a string")
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        # Never echo the URL: it may carry a provider key.
        shown = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigError(key, f"must be an {shown} URL with a host")
