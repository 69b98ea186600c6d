"""Typed, validated settings from one TOML file.

``load_settings(path)`` is the only way settings are built.  Every problem is a
``ConfigError`` naming the dotted key (``networks[1].tokens[0].address``) and the
reason, so a bad file fails at start in one line, never later with a trace.
Only the entry point decides which file to read (``--config`` or the
``BALANCES_CONFIG`` environment variable).
"""

from __future__ import annotations

import math
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from service.addresses import parse_address
from service.domain import FeedPrice, PegPrice, PriceSource, Token
from service.errors import ConfigError, InvalidArgument

__all__ = [
    "CANONICAL_MULTICALL3",
    "CONFIG_ENV_VAR",
    "NetworkSettings",
    "RestSettings",
    "Settings",
    "TlsSettings",
    "WatchSettings",
    "WebhookSettings",
    "load_settings",
    "parse_settings",
]

CONFIG_ENV_VAR = "BALANCES_CONFIG"
CANONICAL_MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
BlockTag = Literal["latest", "safe", "finalized"]
_BLOCK_TAGS: tuple[BlockTag, ...] = ("latest", "safe", "finalized")
_NETWORK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SYMBOL = re.compile(r"[A-Za-z0-9.]{1,16}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL = re.compile(r"\d+(\.\d+)?")


@dataclass(frozen=True)
class NetworkSettings:
    """One EVM network: where to read it, at which block, and which tokens it holds."""

    name: str
    chain_id: int
    rpc_urls: tuple[str, ...]
    confirmations: int
    block_tag: BlockTag
    multicall3: str
    max_calls_per_batch: int
    tokens: tuple[Token, ...]
    ws_url: str | None = None  # when set, the block follower subscribes to newHeads


@dataclass(frozen=True)
class TlsSettings:
    """A server certificate and key (PEM), checked to load at start.

    ``client_ca_file`` (gRPC only) turns on mutual TLS: every client must
    present a certificate issued by one of those CAs.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class RestSettings:
    """The REST shim served beside gRPC (the ``[rest]`` table; absent: gRPC only)."""

    listen: str
    max_body_bytes: int
    body_read_timeout_seconds: float
    default_timeout_seconds: float
    tls: TlsSettings | None = None


@dataclass(frozen=True)
class WatchSettings:
    """Block followers (the ``[watch]`` table)."""

    poll_interval_seconds: float = 2.0


@dataclass(frozen=True)
class WebhookSettings:
    """``balance.updated`` delivery (the ``[webhooks]`` table)."""

    # Plain http is refused except to these hosts (local receivers, tests).
    allow_http_hosts: tuple[str, ...] = ()
    timeout_seconds: float = 10.0
    # Delay before each retry; after the last one fails the event is marked failed.
    retry_schedule_seconds: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 3600.0)


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start."""

    listen: str
    rest: RestSettings | None
    grace_period_seconds: float
    cache_ttl_seconds: float
    directory_path: Path
    rpc_timeout_seconds: float
    base_currency: str
    base_currency_digits: int
    networks: tuple[NetworkSettings, ...]
    tls: TlsSettings | None = None  # [server.tls]: gRPC over TLS (mTLS with client_ca_file)
    watch: WatchSettings = WatchSettings()
    webhooks: WebhookSettings = WebhookSettings()

    def network(self, name: str) -> NetworkSettings:
        return next(n for n in self.networks if n.name == name)


def load_settings(path: Path) -> Settings:
    """Read and validate a TOML file.  Relative paths inside it are relative to the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    return parse_settings(raw, base_dir=path.parent)


def parse_settings(raw: Mapping[str, Any], base_dir: Path) -> Settings:
    """Validate an already-parsed TOML document."""
    doc = _Table(raw, "")
    server = doc.table("server")
    cache = doc.table("cache")
    directory = doc.table("directory")
    chain = doc.table("chain")
    pricing = doc.table("pricing")
    watch = doc.table("watch")
    webhooks = doc.table("webhooks")
    rest = _rest(doc.table("rest"), base_dir) if "rest" in raw else None
    networks_raw = doc.required("networks", list, "a list of [[networks]] tables")
    doc.reject_unknown()

    listen = server.optional("listen", str, "127.0.0.1:50051")
    _check_listen(listen, server.key("listen"))
    server_tls = (
        _tls(server.table("tls"), base_dir, client_ca=True) if "tls" in server.raw else None
    )
    settings = Settings(
        listen=listen,
        rest=rest,
        grace_period_seconds=server.positive_number("grace_period_seconds", 10),
        cache_ttl_seconds=cache.positive_number("ttl_seconds", 30),
        directory_path=base_dir / directory.optional("path", str, "balances.sqlite3"),
        rpc_timeout_seconds=chain.positive_number("rpc_timeout_seconds", 10),
        base_currency=pricing.optional("base_currency", str, "USD"),
        base_currency_digits=pricing.optional("minor_unit_digits", int, 2),
        networks=tuple(
            _network(
                _Table(item, f"networks[{i}]")
                if isinstance(item, dict)
                else _not_a_table(f"networks[{i}]"),
                default_batch=chain.optional("max_calls_per_batch", int, 500),
            )
            for i, item in enumerate(networks_raw)
        ),
        tls=server_tls,
        watch=WatchSettings(
            poll_interval_seconds=watch.positive_number("poll_interval_seconds", 2.0)
        ),
        webhooks=_webhooks(webhooks),
    )
    for table in (server, cache, directory, chain, pricing, watch, webhooks):
        table.reject_unknown()
    if not _CURRENCY.fullmatch(settings.base_currency):
        raise ConfigError("pricing.base_currency", "must be a 3-letter ISO 4217 code like USD")
    if not 0 <= settings.base_currency_digits <= 6:
        raise ConfigError("pricing.minor_unit_digits", "must be between 0 and 6")
    if not settings.networks:
        raise ConfigError("networks", "at least one network is required")
    names = [n.name for n in settings.networks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"networks[{i}].name", f"duplicate network name {name!r}")
    return settings


def _rest(table: _Table, base_dir: Path) -> RestSettings:
    listen = table.optional("listen", str, "127.0.0.1:8080")
    _check_listen(listen, table.key("listen"))
    max_body = table.optional("max_body_bytes", int, 1 << 20)
    if not 1 <= max_body <= 64 << 20:
        raise ConfigError(table.key("max_body_bytes"), "must be between 1 and 67108864")
    settings = RestSettings(
        listen=listen,
        max_body_bytes=max_body,
        body_read_timeout_seconds=table.positive_number("body_read_timeout_seconds", 10),
        default_timeout_seconds=table.positive_number("default_timeout_seconds", 30),
        tls=_tls(table.table("tls"), base_dir, client_ca=False) if "tls" in table.raw else None,
    )
    table.reject_unknown()
    return settings


class _EncryptedKey(Exception):
    """Raised by the password callback: keys must be unencrypted (nobody types a passphrase)."""


def _tls(table: _Table, base_dir: Path, *, client_ca: bool) -> TlsSettings:
    """Paths relative to the config file; each file is read and parsed here, at start."""
    cert_file = _pem_file(table, "cert_file", base_dir, required=True)
    key_file = _pem_file(table, "key_file", base_dir, required=True)
    ca_file = _pem_file(table, "client_ca_file", base_dir, required=False) if client_ca else None
    table.reject_unknown()
    assert cert_file is not None and key_file is not None
    _check_certificates(cert_file, table.key("cert_file"))
    if ca_file is not None:
        _check_certificates(ca_file, table.key("client_ca_file"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKey as exc:
        raise ConfigError(
            table.key("key_file"), f"{key_file}: encrypted keys are not supported"
        ) from exc
    except OSError as exc:  # ssl.SSLError, or the file went away since it was read
        raise ConfigError(
            table.key("key_file"),
            f"{key_file}: not a PEM private key matching cert_file"
            f" ({getattr(exc, 'reason', None) or exc.strerror or 'no usable key in the file'})",
        ) from exc
    return TlsSettings(cert_file, key_file, ca_file)


def _refuse_password() -> bytes:
    raise _EncryptedKey


def _pem_file(table: _Table, name: str, base_dir: Path, *, required: bool) -> Path | None:
    value: str | None = (
        table.required(name, str, "a path to a PEM file")
        if required
        else table.optional(name, str, None)
    )
    if value is None:
        return None
    if not value:
        raise ConfigError(table.key(name), "must be a path to a PEM file")
    path = base_dir / value
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(table.key(name), f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(table.key(name), f"cannot read {str(path)!r}: {exc}") from exc
    return path


def _check_certificates(path: Path, key: str) -> None:
    """The file holds at least one PEM certificate (a chain, or a bundle of CAs)."""
    try:
        text = path.read_text(encoding="ascii")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (OSError, UnicodeDecodeError, ValueError, ssl.SSLError) as exc:
        raise ConfigError(key, f"{path}: not a PEM certificate file") from exc


def _webhooks(table: _Table) -> WebhookSettings:
    hosts = table.optional("allow_http_hosts", list, [])
    for i, host in enumerate(hosts):
        if not isinstance(host, str) or not host or "/" in host or ":" in host:
            raise ConfigError(f"{table.key('allow_http_hosts')}[{i}]", "must be a host name")
    schedule = table.optional("retry_schedule_seconds", list, [5, 30, 120, 600, 3600])
    for i, delay in enumerate(schedule):
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not (0 < delay <= 86400 and math.isfinite(delay))
        ):
            raise ConfigError(
                f"{table.key('retry_schedule_seconds')}[{i}]", "must be 0 < seconds <= 86400"
            )
    timeout = table.positive_number("timeout_seconds", 10.0)
    if timeout > 10:
        raise ConfigError(
            table.key("timeout_seconds"), "must be at most 10 (the public docs' bound)"
        )
    return WebhookSettings(
        allow_http_hosts=tuple(h.lower() for h in hosts),
        timeout_seconds=timeout,
        retry_schedule_seconds=tuple(float(d) for d in schedule),
    )


def _network(table: _Table, default_batch: int) -> NetworkSettings:
    name = table.required("name", str, "a string")
    if not _NETWORK_NAME.fullmatch(name):
        raise ConfigError(table.key("name"), "must be lowercase letters, digits, '-' or '_'")
    chain_id = table.required("chain_id", int, "an integer")
    if chain_id <= 0:
        raise ConfigError(table.key("chain_id"), "must be a positive integer")
    urls = table.required("rpc_urls", list, "a non-empty list of http(s) URLs")
    if not urls:
        raise ConfigError(table.key("rpc_urls"), "must list at least one URL")
    for i, url in enumerate(urls):
        _check_url(url, f"{table.key('rpc_urls')}[{i}]")
    confirmations = table.optional("confirmations", int, 0)
    if confirmations < 0:
        raise ConfigError(table.key("confirmations"), "must be 0 or more")
    block_tag = table.optional("block_tag", str, "latest")
    if block_tag not in _BLOCK_TAGS:
        raise ConfigError(table.key("block_tag"), f"must be one of {', '.join(_BLOCK_TAGS)}")
    if block_tag != "latest" and confirmations:
        raise ConfigError(
            table.key("block_tag"), "set either confirmations or a block_tag, not both"
        )
    multicall3 = _address(table, "multicall3", None) or CANONICAL_MULTICALL3
    ws_url = table.optional("ws_url", str, None)
    if ws_url is not None:
        _check_url(ws_url, table.key("ws_url"), schemes=("ws", "wss"))
    batch = table.optional("max_calls_per_batch", int, default_batch)
    if not 3 <= batch <= 1000:
        raise ConfigError(table.key("max_calls_per_batch"), "must be between 3 and 1000")
    tokens_raw = table.required("tokens", list, "a list of [[networks.tokens]] tables")
    tokens = tuple(
        _token(
            _Table(item, f"{table.key('tokens')}[{i}]")
            if isinstance(item, dict)
            else _not_a_table(f"{table.key('tokens')}[{i}]")
        )
        for i, item in enumerate(tokens_raw)
    )
    table.reject_unknown()
    if not tokens:
        raise ConfigError(table.key("tokens"), "at least one token is required")
    symbols = [t.symbol for t in tokens]
    for i, symbol in enumerate(symbols):
        if symbol in symbols[:i]:
            raise ConfigError(f"{table.key('tokens')}[{i}].symbol", f"duplicate symbol {symbol!r}")
    if sum(t.is_native for t in tokens) > 1:
        raise ConfigError(table.key("tokens"), "at most one token may be native")
    return NetworkSettings(
        name=name,
        chain_id=chain_id,
        rpc_urls=tuple(urls),
        confirmations=confirmations,
        block_tag=cast(BlockTag, block_tag),  # checked against _BLOCK_TAGS above
        multicall3=multicall3,
        max_calls_per_batch=batch,
        tokens=tokens,
        ws_url=ws_url,
    )


def _token(table: _Table) -> Token:
    symbol = table.required("symbol", str, "a string")
    if not _SYMBOL.fullmatch(symbol):
        raise ConfigError(table.key("symbol"), "must be 1-16 letters, digits or '.'")
    decimals = table.required("decimals", int, "an integer")
    if not 0 <= decimals <= 255:
        raise ConfigError(table.key("decimals"), "must be between 0 and 255")
    native = table.optional("native", bool, False)
    address = _address(table, "address", None)
    if native == (address is not None):
        raise ConfigError(table.key("address"), "give either an address or native = true")
    price = _price(table.table("price"))
    table.reject_unknown()
    return Token(symbol=symbol, decimals=decimals, address=address, price=price)


def _price(table: _Table) -> PriceSource:
    peg = table.optional("peg", object, None)
    feed = _address(table, "feed", None)
    max_age = table.optional("max_age_seconds", int, 3600)
    table.reject_unknown()
    if (peg is None) == (feed is None):
        raise ConfigError(table.prefix or "price", 'give either peg = "1" or feed = "0x..."')
    if peg is not None:
        if not isinstance(peg, str) or not _DECIMAL.fullmatch(peg):
            raise ConfigError(
                table.key("peg"), 'must be a decimal string like "1" or "0.998" (never a float)'
            )
        price = Fraction(peg)
        if price <= 0:
            raise ConfigError(table.key("peg"), "must be a positive price")
        return PegPrice(price)
    if max_age <= 0:
        raise ConfigError(table.key("max_age_seconds"), "must be a positive integer")
    assert feed is not None
    return FeedPrice(address=feed, max_age_seconds=max_age)


def _address(table: _Table, name: str, default: str | None) -> str | None:
    value = table.optional(name, str, default)
    if value is None:
        return None
    try:
        return parse_address(value)
    except InvalidArgument as exc:
        raise ConfigError(table.key(name), str(exc)) from exc


def _check_url(url: object, key: str, schemes: tuple[str, ...] = ("http", "https")) -> None:
    if not isinstance(url, str):
        raise ConfigError(key, "must be a string")
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        # Never echo the URL: it may carry a provider key.
        shown = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigError(key, f"must be an {shown} URL with a host")


def _check_listen(listen: str, key: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, "must be HOST:PORT, e.g. 127.0.0.1:50051")


def _not_a_table(key: str) -> _Table:
    raise ConfigError(key, "must be a table")


class _Table:
    """A TOML table being validated; remembers which keys were read to reject typos."""

    def __init__(self, raw: Mapping[str, Any], prefix: str) -> None:
        self.raw = raw
        self.prefix = prefix
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def table(self, name: str) -> _Table:
        value = self.optional(name, dict, {})
        return _Table(value, self.key(name))

    def required(self, name: str, kind: type, expected: str) -> Any:
        if name not in self.raw:
            raise ConfigError(self.key(name), f"is required ({expected})")
        return self.optional(name, kind, None)

    def optional(self, name: str, kind: type, default: Any) -> Any:
        self.seen.add(name)
        if name not in self.raw:
            return default
        value = self.raw[name]
        # bool is an int in Python; a TOML `true` is never a valid count.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self.key(name), f"must be of type {_type_name(kind)}")
        return value

    def positive_number(self, name: str, default: float) -> float:
        self.seen.add(name)
        value = self.raw.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)  # TOML has inf and nan; neither is a duration
            or value <= 0
        ):
            raise ConfigError(self.key(name), "must be a positive number of seconds")
        return float(value)

    def reject_unknown(self) -> None:
        for name in self.raw:
            if name not in self.seen:
                raise ConfigError(self.key(name), "unknown key")


def _type_name(kind: type) -> str:
    names = {str: "string", int: "integer", bool: "boolean", list: "array", dict: "table"}
    return names.get(kind, kind.__name__)
