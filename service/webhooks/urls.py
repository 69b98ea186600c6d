"""A webhook URL's syntax: what it must look like before anyone asks where it points.

Where it may point (public destinations, development receivers) is
``destinations.py``.  Messages never repeat the URL: its path may hold a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from service.errors import InvalidArgument

__all__ = ["MAX_URL_LENGTH", "WebhookTarget", "split_webhook_url"]

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class WebhookTarget:
    """Where a URL says to connect: its scheme, host and port."""

    scheme: str  # "https" or "http"
    host: str  # lowercase; an IPv6 address without its brackets
    port: int  # the URL's, or the scheme's default


def split_webhook_url(url: str) -> WebhookTarget:
    """The scheme, host and port of ``url``, or ``InvalidArgument`` naming the broken rule.

    Rules: an absolute ``http`` or ``https`` URL with a host; printable ASCII
    (non-ASCII host names in their ``xn--`` form); no user name or password; no
    fragment; a port from 1 to 65535 when one is given.
    """
    if not url:
        raise InvalidArgument("url is empty", field="url")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"url is longer than {MAX_URL_LENGTH} characters", field="url")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidArgument(
            "url must be printable ASCII without spaces (percent-encode)", field="url"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        raise InvalidArgument("url is malformed", field="url") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidArgument("url must use https", field="url")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidArgument("url has no host", field="url")
    if "@" in parts.netloc:
        raise InvalidArgument("url must not contain a user name or password", field="url")
    if parts.fragment or url.endswith("#"):
        raise InvalidArgument("url must not have a fragment", field="url")
    if port == 0:
        raise InvalidArgument("url port must be from 1 to 65535", field="url")
    return WebhookTarget(scheme, host, port or _DEFAULT_PORTS[scheme])
