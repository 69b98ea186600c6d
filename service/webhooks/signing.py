"""Standard Webhooks (https://www.standardwebhooks.com/) secrets and signatures.

A secret is ``whsec_`` + base64 of 32 random bytes; the key is those bytes.
A send carries ``webhook-id``, ``webhook-timestamp`` (unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["SECRET_PREFIX", "new_secret", "signature", "signed_headers"]

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
_KEY_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def signature(secret: str, event_id: str, timestamp: int, body: str) -> str:
    """``v1,`` + base64 HMAC-SHA256 of ``{event_id}.{timestamp}.{body}``."""
    message = f"{event_id}.{timestamp}.{body}".encode()
    digest = hmac.new(_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, event_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for one send."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, event_id, timestamp, body),
    }
