"""``balances config show``: the effective configuration as TOML, its secrets masked."""

from __future__ import annotations

from service.redact import Redactor
from service.settings.model import Settings
from service.settings.render import render_settings

__all__ = ["secret_urls", "show_settings"]


def secret_urls(settings: Settings) -> list[str]:
    """Every configured URL that may carry a key or user: never logged or shown whole."""
    urls = [url for network in settings.networks for url in network.rpc_urls]
    urls += [network.ws_url for network in settings.networks if network.ws_url]
    urls += [url for url in (settings.directory_url, settings.cache_redis_url) if url]
    return urls


def show_settings(settings: Settings) -> str:
    """Every setting, defaults and environment variables included; URLs keep only their
    scheme, host and port (``service.redact``); passwords are never written, only
    whether one is set."""
    passwords = {
        "directory": settings.directory_password,
        "cache (Redis)": settings.cache_redis_password,
    }
    comment = "\n".join(
        [
            "The effective configuration: the file, then BALANCES_<SECTION>__<KEY> variables.",
            "URLs are shown as scheme://host:port/*** (their paths and queries may hold keys).",
            *(
                f"{name} password: {'set (not shown)' if value else 'not set'}"
                for name, value in passwords.items()
            ),
        ]
    )
    # Any URL in the text, not only the known ones: nothing a path could hide gets through.
    return Redactor(secret_urls(settings)).redact(render_settings(settings, comment=comment))
