"""Typed settings that own their defaults and rules, and the TOML file that fills them."""

from service.gateway.limits import RestLimits
from service.settings.loader import load_settings, parse_settings
from service.settings.model import (
    BLOCK_TAGS,
    CANONICAL_MULTICALL3,
    BlockTag,
    NetworkSettings,
    PriceSettings,
    RestSettings,
    Settings,
    TokenSettings,
    WatchSettings,
    WebhookSettings,
)
from service.settings.tls import TlsSettings

__all__ = [
    "BLOCK_TAGS",
    "CANONICAL_MULTICALL3",
    "CONFIG_ENV_VAR",
    "BlockTag",
    "NetworkSettings",
    "PriceSettings",
    "RestLimits",
    "RestSettings",
    "Settings",
    "TlsSettings",
    "TokenSettings",
    "WatchSettings",
    "WebhookSettings",
    "load_settings",
    "parse_settings",
]

CONFIG_ENV_VAR = "BALANCES_CONFIG"  # where the entry point looks when there is no --config
