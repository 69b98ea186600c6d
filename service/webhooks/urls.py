"""Which receiver URLs a tenant may configure: https, or http to an allowed host."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from service.errors import InvalidArgument

__all__ = ["MAX_URL_LENGTH", "check_webhook_url"]

MAX_URL_LENGTH = 2048


def check_webhook_url(url: str, allow_http_hosts: Collection[str]) -> str:
    """Return ``url`` when a webhook may be sent to it, else raise ``InvalidArgument``.

    Rules: an absolute ``https`` URL with a host, or ``http`` to a host in
    ``allow_http_hosts``; no user name or password; no fragment; printable
    ASCII only.  Messages never repeat the URL (its path may hold a token).
    """
    if not url:
        raise InvalidArgument("url is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"url is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidArgument("url must be printable ASCII without spaces (percent-encode)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a malformed port)
    except ValueError:
        raise InvalidArgument("url is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise InvalidArgument("url must use https")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidArgument("url has no host")
    if "@" in parts.netloc:
        raise InvalidArgument("url must not contain a user name or password")
    if parts.fragment or url.endswith("#"):
        raise InvalidArgument("url must not have a fragment")
    if scheme == "http" and host not in {h.lower() for h in allow_http_hosts}:
        allowed = ", ".join(sorted(allow_http_hosts)) or "none"
        raise InvalidArgument(
            f"url must use https (plain http only to hosts the service allows: {allowed})"
        )
    return url
