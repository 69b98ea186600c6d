"""Maps one TOML file onto the settings types, naming the dotted key of any problem.

The loader only checks each key's TOML type, rejects unknown keys and places
values; defaults and rules are the settings types' own.  Every problem is a
``ConfigError`` naming the dotted key (``networks[1].tokens[0].address``), so a
bad file fails at start in one line.  Relative paths are relative to the file.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from service.errors import ConfigError
from service.gateway.limits import RestLimits
from service.settings.environment import EnvText, environment_value, name_variable, overlay
from service.settings.model import (
    LimitsSettings,
    LoggingSettings,
    NetworkSettings,
    PriceSettings,
    RestSettings,
    Settings,
    TenantLimitsSettings,
    TokenSettings,
    TracingSettings,
    WatchSettings,
    WebhookSettings,
)
from service.settings.tls import TlsSettings

__all__ = ["load_settings", "parse_settings"]

T = TypeVar("T")
_ABSENT: Final = object()
_PATH: Final = "path"  # a string, resolved against the config file's directory
_PEM_PATH: Final = "PEM path"  # the same, never empty
_ANY: Final = "any"  # no TOML type check: the settings type's rule checks the value
_HEAD = re.compile(r"[A-Za-z_]\w*")
# Secrets never come from the TOML file, only from the environment (or a file it names).
DIRECTORY_PASSWORD_ENV_VAR: Final = "BALANCES_DIRECTORY__PASSWORD"  # noqa: S105 - a name
REDIS_PASSWORD_ENV_VAR: Final = "BALANCES_CACHE__REDIS_PASSWORD"  # noqa: S105 - a name


@dataclasses.dataclass(frozen=True)
class _Key:
    """Where one TOML key goes: the field it fills, its TOML type, what to say when absent."""

    field: str
    kind: type | str
    expected: str = ""


def _keys(*names: str, kind: type | str = _ANY) -> dict[str, _Key]:
    """Keys spelled like their fields."""
    return {name: _Key(name, kind) for name in names}


_NETWORK_KEYS = {
    "name": _Key("name", str, "a string"),
    "chain_id": _Key("chain_id", int, "an integer"),
    "rpc_urls": _Key("rpc_urls", list, "a non-empty list of http(s) URLs"),
    **_keys("confirmations", "max_calls_per_batch", "max_lag_blocks", "verify_providers", kind=int),
    **_keys("hedge_floor_seconds", "recovery_seconds", "max_stale_seconds"),
    **_keys("block_tag", "multicall3", "ws_url", kind=str),
}
_TOKEN_KEYS = {
    "symbol": _Key("symbol", str, "a string"),
    "decimals": _Key("decimals", int, "an integer"),
    "native": _Key("native", bool),
    "address": _Key("address", str),
    "onchain_symbol": _Key("onchain_symbol", str),
}
_PRICE_KEYS = {**_keys("peg"), **_keys("feed", kind=str), **_keys("max_age_seconds", kind=int)}
_PEM = "a path to a PEM file"
_TLS_KEYS = {
    "cert_file": _Key("cert_file", _PEM_PATH, _PEM),
    "key_file": _Key("key_file", _PEM_PATH, _PEM),
}
_CLIENT_CA_KEYS = {"client_ca_file": _Key("client_ca_file", _PEM_PATH, _PEM)}
_LIMITS_KEYS = {
    **_keys("max_body_bytes", "max_connections", "max_connections_per_client", kind=int),
    **_keys(
        "body_read_timeout_seconds",
        "default_timeout_seconds",
        "header_timeout_seconds",
        "keepalive_timeout_seconds",
    ),
}
# [limits] and each [limits.tenants.<name>]: the rate may be fractional, the counts may not.
_QUOTA_KEYS = {
    **_keys("requests_per_second"),
    **_keys("burst", "max_in_flight", "max_streams", kind=int),
}
_TRACING_KEYS = {
    "enabled": _Key("enabled", bool),
    **_keys("otlp_endpoint", "service_name", kind=str),
    **_keys("sample_ratio"),
}
_LOGGING_KEYS = {**_keys("format", kind=str), **_keys("access_log", kind=bool)}
_WEBHOOK_KEYS = {
    **_keys("allow_http_hosts", "retry_schedule_seconds", kind=list),
    **_keys("timeout_seconds"),
}
# The top-level Settings fields, by the table and key they come from.
_SETTINGS_KEYS: dict[str, dict[str, _Key]] = {
    "server": {**_keys("listen", kind=str), **_keys("grace_period_seconds")},
    "cache": {
        "ttl_seconds": _Key("cache_ttl_seconds", _ANY),
        "max_entries": _Key("cache_max_entries", int),
        "redis_url": _Key("cache_redis_url", _ANY),
    },
    "directory": {"path": _Key("directory_path", _PATH), "url": _Key("directory_url", _ANY)},
    "chain": _keys("rpc_timeout_seconds"),
    "cluster": {"lease_seconds": _Key("cluster_lease_seconds", _ANY)},
    "metrics": {"listen": _Key("metrics_listen", str)},
    "pricing": {
        "base_currency": _Key("base_currency", str),
        "minor_unit_digits": _Key("minor_unit_digits", int),
    },
}
_SETTINGS_TOML_KEY = {
    key.field: f"{table}.{name}"
    for table, keys in _SETTINGS_KEYS.items()
    for name, key in keys.items()
}


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML file.  Relative paths inside it are relative to the file.

    ``environ`` (the CLI passes ``os.environ``) may set any key (``BALANCES_SERVER__LISTEN``,
    see ``service.settings.environment``) and supplies the secrets a TOML file may not
    hold: ``BALANCES_DIRECTORY__PASSWORD``, ``BALANCES_CACHE__REDIS_PASSWORD``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    return parse_settings(raw, base_dir=path.parent, environ=environ)


def parse_settings(
    raw: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate an already-parsed TOML document, with ``environ``'s ``BALANCES_<SECTION>__<KEY>``
    variables over its keys (``service.settings.environment``) and its secrets (load_settings).
    """
    reserved = (DIRECTORY_PASSWORD_ENV_VAR, REDIS_PASSWORD_ENV_VAR)  # read below, not keys
    doc, origins = overlay(raw, environ or {}, reserved)
    try:
        return _parse_document(doc, base_dir, environ or {})
    except ConfigError as exc:
        named = name_variable(exc, origins)
        if named is exc:
            raise
        raise named from exc


def _parse_document(raw: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str]) -> Settings:
    doc = _Table(raw, "", base_dir)
    sections = (*_SETTINGS_KEYS, "watch", "webhooks", "limits", "tracing", "logging")
    tables = {name: doc.table(name) for name in sections}
    rest = _rest(doc.table("rest")) if "rest" in raw else None
    networks = doc.tables("networks", "a list of [[networks]] tables")
    doc.reject_unknown()

    server = tables["server"]
    kwargs: dict[str, Any] = {}
    for name, keys in _SETTINGS_KEYS.items():
        kwargs |= tables[name].fields(Settings, keys)
    kwargs.setdefault("directory_path", base_dir / _default(Settings, "directory_path"))
    kwargs |= _directory_password(tables["directory"], environ or {})
    kwargs |= _redis_password(tables["cache"], environ or {})
    if "tls" in server.raw:
        kwargs["tls"] = _tls(server.table("tls"), client_ca=True)
    default_batch = tables["chain"].value("max_calls_per_batch", int)
    kwargs["networks"] = tuple(_network(table, default_batch) for table in networks)
    kwargs["watch"] = _build(WatchSettings, tables["watch"], _keys("poll_interval_seconds"))
    kwargs["webhooks"] = _build(WebhookSettings, tables["webhooks"], _WEBHOOK_KEYS)
    kwargs["limits"] = _limits(tables["limits"])
    kwargs["logging"] = _build(LoggingSettings, tables["logging"], _LOGGING_KEYS)
    kwargs["tracing"] = _build(TracingSettings, tables["tracing"], _TRACING_KEYS)
    kwargs["rest"] = rest
    for table in tables.values():
        table.reject_unknown()
    return _construct(Settings, "", kwargs, _SETTINGS_TOML_KEY)


def _directory_password(table: _Table, environ: Mapping[str, str]) -> dict[str, Any]:
    """The PostgreSQL password from the environment or ``[directory] password_file``."""
    return _password(
        table,
        environ,
        env_var=DIRECTORY_PASSWORD_ENV_VAR,
        file_key="password_file",
        url_key="url",
        needs="directory.url (PostgreSQL)",
        field="directory_password",
    )


def _redis_password(table: _Table, environ: Mapping[str, str]) -> dict[str, Any]:
    """The Redis password from the environment or ``[cache] redis_password_file``."""
    return _password(
        table,
        environ,
        env_var=REDIS_PASSWORD_ENV_VAR,
        file_key="redis_password_file",
        url_key="redis_url",
        needs="cache.redis_url",
        field="cache_redis_password",
    )


def _password(
    table: _Table,
    environ: Mapping[str, str],
    *,
    env_var: str,
    file_key: str,
    url_key: str,
    needs: str,
    field: str,
) -> dict[str, Any]:
    """A server's password, from ``env_var`` or the file ``file_key`` names (one of them,
    and the file only beside ``url_key``): the Settings fields ``field`` (and ``field_file``)."""
    from_env = environ.get(env_var) or None
    file = table.value(file_key, _PATH)
    if file is _ABSENT:
        return {} if from_env is None else {field: from_env}
    key = table.key(file_key)
    if url_key not in table.raw:
        raise ConfigError(key, f"is only used with {needs}")
    if from_env is not None:
        raise ConfigError(key, f"and {env_var} are both set: use one")
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(key, f"cannot read: {reason or exc}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(key, "the file is empty")
    return {field: password, f"{field}_file": file}


def _rest(table: _Table) -> RestSettings:
    kwargs = table.fields(RestSettings, _keys("listen", kind=str))
    kwargs["limits"] = _construct(RestLimits, table.prefix, table.fields(RestLimits, _LIMITS_KEYS))
    if "tls" in table.raw:
        kwargs["tls"] = _tls(table.table("tls"), client_ca=False)  # no mTLS on REST
    table.reject_unknown()
    return _construct(RestSettings, table.prefix, kwargs)


def _limits(table: _Table) -> LimitsSettings:
    kwargs = table.fields(LimitsSettings, _QUOTA_KEYS)
    tenants = table.table("tenants")
    kwargs["tenants"] = {
        name: _build(TenantLimitsSettings, tenants.table(name), _QUOTA_KEYS) for name in tenants.raw
    }
    table.reject_unknown()
    return _construct(LimitsSettings, table.prefix, kwargs)


def _tls(table: _Table, *, client_ca: bool) -> TlsSettings:
    return _build(TlsSettings, table, {**_TLS_KEYS, **(_CLIENT_CA_KEYS if client_ca else {})})


def _network(table: _Table, default_batch: Any) -> NetworkSettings:
    kwargs = table.fields(NetworkSettings, _NETWORK_KEYS)
    if default_batch is not _ABSENT:  # [chain] max_calls_per_batch: for networks without one
        kwargs.setdefault("max_calls_per_batch", default_batch)
    tokens = table.tables("tokens", "a list of [[networks.tokens]] tables")
    kwargs["tokens"] = tuple(_token(token) for token in tokens)
    table.reject_unknown()
    return _construct(NetworkSettings, table.prefix, kwargs)


def _token(table: _Table) -> Any:
    kwargs = table.fields(TokenSettings, _TOKEN_KEYS)
    kwargs["price"] = _build(PriceSettings, table.table("price"), _PRICE_KEYS)
    table.reject_unknown()
    return _construct(TokenSettings, table.prefix, kwargs).token


def _build(cls: type[T], table: _Table, keys: Mapping[str, _Key]) -> T:
    """A settings object from one table whose keys are all in ``keys``."""
    kwargs = table.fields(cls, keys)
    table.reject_unknown()
    return _construct(cls, table.prefix, kwargs)


def _construct(
    cls: type[T], prefix: str, kwargs: dict[str, Any], toml_keys: Mapping[str, str] = {}
) -> T:
    """``cls(**kwargs)``, its ConfigError's key turned into the dotted TOML key."""
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        head = _HEAD.match(exc.key)
        key = exc.key
        if head is not None and head.group() in toml_keys:
            key = toml_keys[head.group()] + key[head.end() :]
        raise ConfigError(".".join(part for part in (prefix, key) if part), exc.reason) from exc


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _required(cls: type, name: str) -> bool:
    return any(
        f.name == name
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


class _Table:
    """A TOML table being read; remembers which keys were read to reject typos."""

    def __init__(self, raw: Mapping[str, Any], prefix: str, base_dir: Path) -> None:
        self.raw = raw
        self.prefix = prefix
        self.base_dir = base_dir
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def value(self, name: str, kind: type | str) -> Any:
        """The value with its TOML type checked, or ``_ABSENT``."""
        self.seen.add(name)
        if name not in self.raw:
            return _ABSENT
        value = self.raw[name]
        from_env = isinstance(value, EnvText)  # a BALANCES_* variable's text (environment.py)
        if from_env:
            value = environment_value(value, as_text=kind in (str, _PATH, _PEM_PATH))
        if kind == _ANY:
            return value
        expected = str if isinstance(kind, str) else kind
        # bool is an int in Python; a TOML `true` is never a valid count.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(self.key(name), f"must be of type {_type_name(expected)}")
        if kind == _PEM_PATH and not value:
            raise ConfigError(self.key(name), f"must be {_PEM}")
        if kind in (_PATH, _PEM_PATH):
            return Path(str(value)) if from_env else self.base_dir / str(value)
        return tuple(value) if isinstance(value, list) else value

    def fields(self, cls: type, keys: Mapping[str, _Key]) -> dict[str, Any]:
        """Keyword arguments for ``cls`` from the keys present; a required key may not be absent."""
        kwargs: dict[str, Any] = {}
        for name, key in keys.items():
            value = self.value(name, key.kind)
            if value is not _ABSENT:
                kwargs[key.field] = value
            elif _required(cls, key.field):
                raise ConfigError(self.key(name), f"is required ({key.expected})")
        return kwargs

    def table(self, name: str) -> _Table:
        value = self.value(name, dict)
        return _Table({} if value is _ABSENT else value, self.key(name), self.base_dir)

    def tables(self, name: str, expected: str) -> list[_Table]:
        """A required array of tables (``[[name]]``)."""
        items = self.value(name, list)
        if items is _ABSENT:
            raise ConfigError(self.key(name), f"is required ({expected})")
        tables = []
        for i, item in enumerate(items):
            key = f"{self.key(name)}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(key, "must be a table")
            tables.append(_Table(item, key, self.base_dir))
        return tables

    def reject_unknown(self) -> None:
        for name in self.raw:
            if name not in self.seen:
                raise ConfigError(self.key(name), "unknown key")


def _type_name(kind: type) -> str:
    names = {str: "string", int: "integer", bool: "boolean", list: "array", dict: "table"}
    return names.get(kind, kind.__name__)
