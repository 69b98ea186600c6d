"""Writes ``Settings`` as the TOML file that ``load_settings`` reads back to equal settings.

For the demo, which leaves a config file for its user, and for tests that
start ``balances`` as a subprocess.  Paths are written absolute.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

from service.domain import FeedPrice, Token
from service.settings.model import (
    LimitsSettings,
    NetworkSettings,
    Settings,
    TenantLimitsSettings,
)
from service.settings.tls import TlsSettings

__all__ = ["render_settings"]

Value = str | int | float | bool | Path | tuple[str | float, ...]


def render_settings(settings: Settings, *, comment: str = "") -> str:
    """Every setting, defaults included, so the file says what the service will do."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += _table(
        "server", {"listen": settings.listen, "grace_period_seconds": settings.grace_period_seconds}
    )
    lines += _tls("server.tls", settings.tls)
    if settings.rest is not None:
        limits = settings.rest.limits
        lines += _table(
            "rest",
            {
                "listen": settings.rest.listen,
                "max_body_bytes": limits.max_body_bytes,
                "body_read_timeout_seconds": limits.body_read_timeout_seconds,
                "default_timeout_seconds": limits.default_timeout_seconds,
                "header_timeout_seconds": limits.header_timeout_seconds,
                "keepalive_timeout_seconds": limits.keepalive_timeout_seconds,
                "max_connections": limits.max_connections,  # 0: from the fd limit
                "max_connections_per_client": limits.max_connections_per_client,
            },
        )
        lines += _tls("rest.tls", settings.rest.tls)
    lines += _table(
        "cache",
        {
            "ttl_seconds": settings.cache_ttl_seconds,
            "max_entries": settings.cache_max_entries,
            "redis_url": settings.cache_redis_url,  # the password is never written (env or file)
            "redis_password_file": (
                None
                if settings.cache_redis_password_file is None
                else settings.cache_redis_password_file.absolute()
            ),
        },
    )
    directory: dict[str, Value | None] = {"path": settings.directory_path.absolute()}
    if settings.directory_url is not None:  # the password is never written (env or file)
        directory["url"] = settings.directory_url
    if settings.directory_password_file is not None:
        directory["password_file"] = settings.directory_password_file.absolute()
    lines += _table("directory", directory)
    lines += _table("chain", {"rpc_timeout_seconds": settings.rpc_timeout_seconds})
    lines += _table(
        "pricing",
        {
            "base_currency": settings.base_currency,
            "minor_unit_digits": settings.minor_unit_digits,
        },
    )
    lines += _table("watch", {"poll_interval_seconds": settings.watch.poll_interval_seconds})
    lines += _table("cluster", {"lease_seconds": settings.cluster_lease_seconds})
    lines += _table("metrics", {"listen": settings.metrics_listen})
    webhooks = settings.webhooks
    lines += _table(
        "webhooks",
        {
            "allow_http_hosts": webhooks.allow_http_hosts,
            "timeout_seconds": webhooks.timeout_seconds,
            "retry_schedule_seconds": webhooks.retry_schedule_seconds,
        },
    )
    lines += _limits(settings.limits)
    lines += _table(
        "logging",
        {"format": settings.logging.format, "access_log": settings.logging.access_log},
    )
    tracing = settings.tracing
    lines += _table(
        "tracing",
        {
            "enabled": tracing.enabled,
            "otlp_endpoint": tracing.otlp_endpoint,
            "service_name": tracing.service_name,
            "sample_ratio": tracing.sample_ratio,
        },
    )
    for network in settings.networks:
        lines += _network(network)
    return "\n".join(lines)


def _limits(limits: LimitsSettings) -> list[str]:
    lines = _table("limits", _quota_values(limits))
    for name, own in limits.tenants.items():
        lines += _table(f"limits.tenants.{name}", _quota_values(own))  # names are bare keys
    return lines


def _quota_values(limits: LimitsSettings | TenantLimitsSettings) -> dict[str, Value | None]:
    return {
        "requests_per_second": limits.requests_per_second,
        "burst": limits.burst,
        "max_in_flight": limits.max_in_flight,
        "max_streams": limits.max_streams,
    }


def _network(network: NetworkSettings) -> list[str]:
    values: dict[str, Value | None] = {
        "name": network.name,
        "chain_id": network.chain_id,
        "rpc_urls": network.rpc_urls,
        "confirmations": network.confirmations,
        "block_tag": network.block_tag,
        "multicall3": network.multicall3,
        "max_calls_per_batch": network.max_calls_per_batch,
        "ws_url": network.ws_url,
        "hedge_floor_seconds": network.hedge_floor_seconds,
        "recovery_seconds": network.recovery_seconds,
        "max_lag_blocks": network.max_lag_blocks,
        "max_stale_seconds": network.max_stale_seconds,  # 0: never serve a stale read
        "verify_providers": network.verify_providers,  # 1: no cross-check
    }
    lines = _table("[networks]", values)
    for token in network.tokens:
        lines += _table("[networks.tokens]", _token(token))
    return lines


def _token(token: Token) -> dict[str, Value | None]:
    if isinstance(token.price, FeedPrice):
        price = f"{{ feed = {_value(token.price.address)}"
        price += f", max_age_seconds = {token.price.max_age_seconds} }}"
    else:
        price = f"{{ peg = {_value(_decimal(token.price.value))} }}"
    return {
        "symbol": token.currency,
        "decimals": token.decimals,
        **({"native": True} if token.is_native else {"address": token.address}),
        "onchain_symbol": token.onchain_symbol,
        "price": _Raw(price),
    }


class _Raw(str):
    """Already TOML."""


def _tls(name: str, tls: TlsSettings | None) -> list[str]:
    if tls is None:
        return []
    return _table(
        name,
        {
            "cert_file": tls.cert_file.absolute(),
            "key_file": tls.key_file.absolute(),
            "client_ca_file": tls.client_ca_file.absolute() if tls.client_ca_file else None,
        },
    )


def _table(name: str, values: dict[str, Value | None]) -> list[str]:
    return [
        f"[{name}]",
        *(f"{key} = {_value(value)}" for key, value in values.items() if value is not None),
        "",
    ]


def _value(value: Value) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def _decimal(value: Fraction) -> str:
    """A price as the decimal string TOML needs (never a float); it must have one."""
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
        if digits > 78:
            raise ValueError(f"{value} has no finite decimal form")
    scaled = int(value * 10**digits)
    whole, fraction = divmod(scaled, 10**digits)
    return f"{whole}.{fraction:0{digits}d}" if digits else str(whole)
