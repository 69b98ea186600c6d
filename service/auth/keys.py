"""API keys: ``bk_<key id>_<secret>``.  Only the SHA-256 of a key is ever stored.

The key id (12 hex digits) is public: it names a key in listings and logs and
lets the store find the one hash to compare.  The secret is 32 random bytes;
with that much entropy a plain SHA-256 is enough (no slow KDF needed), and the
comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["NewApiKey", "hash_key", "key_id_of", "keys_match", "new_api_key"]

_KEY = re.compile(r"bk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class NewApiKey:
    """A freshly made key: ``plaintext`` is shown once and never stored."""

    key_id: str
    plaintext: str
    digest: bytes


def new_api_key() -> NewApiKey:
    key_id = secrets.token_hex(6)
    plaintext = f"bk_{key_id}_{secrets.token_urlsafe(32)}"
    return NewApiKey(key_id, plaintext, hash_key(plaintext))


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).digest()


def key_id_of(plaintext: str) -> str | None:
    """The key id of a well-formed key, else None (nothing to look up)."""
    match = _KEY.fullmatch(plaintext)
    return match.group(1) if match else None


def keys_match(plaintext: str, stored_digest: bytes) -> bool:
    """Constant-time comparison of a presented key with a stored digest."""
    return hmac.compare_digest(hash_key(plaintext), stored_digest)
