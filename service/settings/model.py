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
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlsplit

from service.addresses import parse_address
from service.chain.providers import ProviderPolicy
from service.checks import check_int_between, check_listen, normalise, positive_seconds
from service.domain import (
    FeedPrice,
    PegPrice,
    PriceSource,
    ReadDepth,
    Token,
    WebhookPolicy,
    parse_tenant,
)
from service.errors import ConfigError, InvalidArgument
from service.gateway.limits import RestLimits
from service.logs import LOG_FORMATS
from service.quotas import Quota, QuotaPolicy
from service.settings.tls import TlsSettings
from service.webhooks.destinations import parse_dev_receiver

__all__ = [
    "BLOCK_TAGS",
    "CANONICAL_MULTICALL3",
    "BlockTag",
    "LimitsSettings",
    "LoggingSettings",
    "NetworkSettings",
    "PriceSettings",
    "RestSettings",
    "Settings",
    "TenantLimitsSettings",
    "TokenSettings",
    "TracingSettings",
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
    # What the contract's symbol() says when the label differs on purpose (checked at start).
    onchain_symbol: str | None = None

    def __post_init__(self) -> None:
        if not _SYMBOL.fullmatch(self.symbol):
            raise ConfigError("symbol", "must be 1-16 letters, digits or '.'")
        check_int_between("decimals", self.decimals, 0, 255)
        if self.address is not None:
            normalise(self, "address", _address("address", self.address))
        if self.native == (self.address is not None):
            raise ConfigError("address", "give either an address or native = true")
        if self.onchain_symbol is not None:
            if self.native:
                raise ConfigError("onchain_symbol", "only for a token with an address")
            text = self.onchain_symbol
            if not isinstance(text, str) or not 0 < len(text) <= 64 or not text.isprintable():
                raise ConfigError("onchain_symbol", "must be 1-64 printable characters")

    @property
    def token(self) -> Token:
        """The domain value the chain reader and pricing use."""
        return Token(
            self.symbol, self.decimals, self.address, self.price.source, self.onchain_symbol
        )


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
    max_calls_per_batch: int = 1000  # 224 KiB of calldata, ~6.2M gas (service.chain.multicall)
    ws_url: str | None = None  # when set, the block follower subscribes to newHeads
    # Providers (service.chain.providers): hedging, rest after faults, lag.
    hedge_floor_seconds: float = 0.2
    recovery_seconds: float = 10.0
    max_lag_blocks: int = 5
    # Stale-if-error (service.balances): how old a last good read may be when served
    # because every provider failed; 0 turns it off.
    max_stale_seconds: float = 60.0
    # Provider cross-check (service.chain.cross_check): a snapshot is served only when this
    # many providers report the same hash for its block; 1 turns it off.
    verify_providers: int = 1

    def __post_init__(self) -> None:
        for name in ("hedge_floor_seconds", "recovery_seconds"):
            normalise(self, name, positive_seconds(name, getattr(self, name)))
        if self.max_stale_seconds != 0 or isinstance(self.max_stale_seconds, bool):
            try:
                stale = positive_seconds("max_stale_seconds", self.max_stale_seconds)
            except ConfigError:
                raise ConfigError(
                    "max_stale_seconds", "must be 0 (off) or a positive number of seconds"
                ) from None
            normalise(self, "max_stale_seconds", stale)
        check_int_between("max_lag_blocks", self.max_lag_blocks, 0, 10_000)
        if not _NETWORK_NAME.fullmatch(self.name):
            raise ConfigError("name", "must be lowercase letters, digits, '-' or '_'")
        if self.chain_id <= 0:
            raise ConfigError("chain_id", "must be a positive integer")
        if not self.rpc_urls:
            raise ConfigError("rpc_urls", "must list at least one URL")
        for i, url in enumerate(self.rpc_urls):
            _check_url(f"rpc_urls[{i}]", url)
        if isinstance(self.verify_providers, bool) or not isinstance(self.verify_providers, int):
            raise ConfigError("verify_providers", "must be an integer")
        if not 1 <= self.verify_providers <= len(self.rpc_urls):
            raise ConfigError(
                "verify_providers",
                f"must be between 1 (off) and the number of rpc_urls ({len(self.rpc_urls)})",
            )
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

    def provider_policy(self, attempt_timeout: float) -> ProviderPolicy:
        """How the chain adapter uses this network's providers."""
        return ProviderPolicy(
            attempt_timeout=attempt_timeout,
            hedge_floor_seconds=self.hedge_floor_seconds,
            recovery_seconds=self.recovery_seconds,
            max_lag_blocks=self.max_lag_blocks,
        )

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
class TracingSettings:
    """OpenTelemetry traces exported over OTLP/HTTP (the ``[tracing]`` table; off by default)."""

    enabled: bool = False
    # The collector's traces URL, e.g. "http://127.0.0.1:4318/v1/traces"; needed when enabled.
    otlp_endpoint: str | None = None
    service_name: str = "balances"
    sample_ratio: float = 1.0  # of the traces that start here; a caller's sampled flag wins

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("enabled", "must be true or false")
        if self.otlp_endpoint is not None:
            _check_url("otlp_endpoint", self.otlp_endpoint)
            if urlsplit(self.otlp_endpoint).username is not None:
                raise ConfigError("otlp_endpoint", "must not contain credentials")
        elif self.enabled:
            raise ConfigError(
                "otlp_endpoint", "is needed when enabled = true (the collector's traces URL)"
            )
        name = self.service_name
        if not isinstance(name, str) or not 0 < len(name) <= 128 or not name.isprintable():
            raise ConfigError("service_name", "must be 1-128 printable characters")
        ratio = self.sample_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise ConfigError("sample_ratio", "must be a number from 0 to 1")
        normalise(self, "sample_ratio", float(ratio))


@dataclass(frozen=True)
class LoggingSettings:
    """Log lines on stderr (the ``[logging]`` table; ``serve --log-format`` wins over it)."""

    format: str = "text"  # or "json": one JSON object per line (service/logs.py)
    access_log: bool = False  # one INFO line per finished request (service/request_context.py)

    def __post_init__(self) -> None:
        if self.format not in LOG_FORMATS:
            raise ConfigError("format", f"must be one of {', '.join(LOG_FORMATS)}")
        if not isinstance(self.access_log, bool):
            raise ConfigError("access_log", "must be true or false")


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

    # Development receivers ("127.0.0.1:8099"): plain http allowed, exempt from the
    # address rules (service/webhooks/destinations.py); never one of the service's ports.
    allow_http_hosts: tuple[str, ...] = ()
    timeout_seconds: float = 10.0
    # Delay before each retry; after the last one fails the event is marked failed.
    retry_schedule_seconds: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 3600.0)

    def __post_init__(self) -> None:
        for i, entry in enumerate(self.allow_http_hosts):
            try:
                parse_dev_receiver(entry if isinstance(entry, str) else "")
            except ValueError as exc:
                raise ConfigError(f"allow_http_hosts[{i}]", str(exc)) from None
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


_MAX_RATE = 1_000_000  # the largest count or rate one may configure in [limits]
_T = TypeVar("_T")


@dataclass(frozen=True)
class TenantLimitsSettings:
    """A tenant's own limits (a ``[limits.tenants.<name>]`` table); unset: the default's."""

    requests_per_second: float | None = None
    burst: int | None = None
    max_in_flight: int | None = None
    max_streams: int | None = None

    def __post_init__(self) -> None:
        _check_limits(self)


@dataclass(frozen=True)
class LimitsSettings:
    """Rate limits and concurrency quotas per API key (the ``[limits]`` table).

    The default rate keeps one key at full blast to a fraction of one server
    (scripts/noisy_neighbour.py measures what that leaves the others); the
    burst and counts are wide enough for batch jobs and many watches.
    ``tenants`` gives a tenant its own values, each key of that tenant getting them.
    """

    requests_per_second: float = 100.0  # sustained calls (unary and stream opens) per second
    burst: int = 500  # calls at once above the sustained rate (the token bucket's size)
    max_in_flight: int = 256  # unary calls running at once
    max_streams: int = 64  # watch streams open at once (apart from unary calls)
    tenants: Mapping[str, TenantLimitsSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_limits(self)
        for name in self.tenants:
            try:
                parse_tenant(name)
            except InvalidArgument as exc:
                shown = name if name.isascii() and name.isprintable() else "<name>"
                raise ConfigError(f"tenants.{shown}", str(exc)) from exc

    @property
    def policy(self) -> QuotaPolicy:
        """What the call quotas take: each tenant's values over the server default."""
        default = Quota(
            requests_per_second=self.requests_per_second,
            burst=self.burst,
            max_in_flight=self.max_in_flight,
            max_streams=self.max_streams,
        )
        return QuotaPolicy(
            default,
            {
                name: Quota(
                    requests_per_second=_either(own.requests_per_second, self.requests_per_second),
                    burst=_either(own.burst, self.burst),
                    max_in_flight=_either(own.max_in_flight, self.max_in_flight),
                    max_streams=_either(own.max_streams, self.max_streams),
                )
                for name, own in self.tenants.items()
            },
        )


def _check_limits(limits: LimitsSettings | TenantLimitsSettings) -> None:
    rate = limits.requests_per_second
    if rate is not None:
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not (0 < rate <= _MAX_RATE and math.isfinite(rate))
        ):
            raise ConfigError("requests_per_second", f"must be a number, 0 < rate <= {_MAX_RATE}")
        normalise(limits, "requests_per_second", float(rate))
    for name in ("burst", "max_in_flight", "max_streams"):
        value = getattr(limits, name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(name, "must be an integer")
            check_int_between(name, value, 1, _MAX_RATE)


def _either(own: _T | None, default: _T) -> _T:
    return default if own is None else own


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service needs to start."""

    networks: tuple[NetworkSettings, ...]
    listen: str = "127.0.0.1:50051"
    tls: TlsSettings | None = None  # gRPC over TLS (mTLS with client_ca_file)
    rest: RestSettings | None = None  # None: gRPC only
    metrics_listen: str | None = None  # [metrics] listen: GET /metrics there; None: off
    grace_period_seconds: float = 10.0
    cache_ttl_seconds: float = 30.0
    cache_max_entries: int = 100_000  # snapshots held in memory, least recently used dropped
    # Redis (redis://host:port/db, no password) shared by replicas for the snapshot cache and
    # the rate limits; None: both in process memory.
    cache_redis_url: str | None = None
    cache_redis_password_file: Path | None = None  # where cache_redis_password was read from
    # From BALANCES_CACHE__REDIS_PASSWORD or redis_password_file (never from the TOML itself).
    cache_redis_password: str | None = field(default=None, repr=False)
    directory_path: Path = Path("balances.sqlite3")
    # PostgreSQL (postgresql://user@host:port/db, no password); None: the SQLite file above.
    directory_url: str | None = None
    directory_password_file: Path | None = None  # where directory_password was read from
    # From BALANCES_DIRECTORY__PASSWORD or password_file (never from the TOML itself).
    directory_password: str | None = field(default=None, repr=False)
    # [cluster] lease_seconds: how long a lost leader may go unnoticed (service/cluster/).
    cluster_lease_seconds: float = 10.0
    rpc_timeout_seconds: float = 10.0
    base_currency: str = "USD"
    minor_unit_digits: int = 2
    watch: WatchSettings = field(default_factory=WatchSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    def __post_init__(self) -> None:
        check_listen("listen", self.listen)
        if self.metrics_listen is not None:
            check_listen("metrics_listen", self.metrics_listen)
        for name in ("grace_period_seconds", "cache_ttl_seconds", "rpc_timeout_seconds"):
            normalise(self, name, positive_seconds(name, getattr(self, name)))
        lease = positive_seconds("cluster_lease_seconds", self.cluster_lease_seconds)
        normalise(self, "cluster_lease_seconds", lease)
        if not _CURRENCY.fullmatch(self.base_currency):
            raise ConfigError("base_currency", "must be a 3-letter ISO 4217 code like USD")
        check_int_between("minor_unit_digits", self.minor_unit_digits, 0, 6)
        check_int_between("cache_max_entries", self.cache_max_entries, 1, 100_000_000)
        if self.cache_redis_url is not None:
            _check_redis_url("cache_redis_url", self.cache_redis_url)
        if self.directory_url is not None:
            _check_directory_url("directory_url", self.directory_url)
        if not self.networks:
            raise ConfigError("networks", "at least one network is required")
        names = [n.name for n in self.networks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"networks[{i}].name", f"duplicate network name {name!r}")
        # A development receiver must never be this service (bound ports: destinations.py).
        listens = (self.listen, self.rest.listen if self.rest else "", self.metrics_listen or "")
        own = {int(listen.rpartition(":")[2]) for listen in listens if listen} - {0}
        for i, entry in enumerate(self.webhooks.allow_http_hosts):
            if parse_dev_receiver(entry)[1] in own:
                raise ConfigError(
                    f"webhooks.allow_http_hosts[{i}]",
                    "must not name one of the service's own ports"
                    " (listen, rest.listen, metrics.listen)",
                )

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


def _server_url(key: str, url: object, malformed: str) -> tuple[SplitResult, set[str], bool]:
    """``url`` split: (parts, lower-cased query parameter names, whether it holds a password
    in its userinfo).  ``malformed``: the error for a bad port.  The URL is never echoed."""
    if not isinstance(url, str):
        raise ConfigError(key, "must be a string")
    parts = urlsplit(url)
    try:
        has_password = parts.password is not None
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ConfigError(key, malformed) from None
    query = {name.lower() for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return parts, query, has_password


def _check_directory_url(key: str, url: object) -> None:
    """A PostgreSQL URL with a host and no password (that comes from the environment or a
    file).  The URL is never echoed: it may carry a password despite the rule."""
    parts, query, has_password = _server_url(key, url, "must be a postgresql:// URL with a host")
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or "host" in query):
        raise ConfigError(key, "must be a postgresql:// URL with a host")
    if has_password or "password" in query:
        raise ConfigError(
            key,
            "must not contain a password: set BALANCES_DIRECTORY__PASSWORD"
            " or directory.password_file instead",
        )


def _check_redis_url(key: str, url: object) -> None:
    """A Redis URL (``redis://``, ``rediss://`` with a host, or ``unix://`` with a path) and
    no password (that comes from the environment or a file).  The URL is never echoed."""
    parts, query, has_password = _server_url(key, url, "must be a redis:// URL with a host")
    if not (
        (parts.scheme in ("redis", "rediss") and parts.hostname)
        or (parts.scheme == "unix" and parts.path)
    ):
        raise ConfigError(key, "must be a redis://, rediss:// or unix:// URL with a host")
    if has_password or "password" in query:
        raise ConfigError(
            key,
            "must not contain a password: set BALANCES_CACHE__REDIS_PASSWORD"
            " or cache.redis_password_file instead",
        )
