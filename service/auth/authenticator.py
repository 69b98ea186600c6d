"""Who is calling: an API key in, a tenant out, or ``Unauthenticated`` (one message for all)."""

from __future__ import annotations

from typing import NamedTuple

from service.auth.keys import hash_key, key_id_of, keys_match
from service.errors import Unauthenticated
from service.ports import ApiKeyStore

__all__ = ["Authenticator", "Caller"]

# Compared against when the key id is unknown, so a miss costs what a hit costs.
_DECOY_DIGEST = hash_key("bk_000000000000_decoy-decoy-decoy-decoy-decoy-decoy-decoy-dec")


class Caller(NamedTuple):
    """An authenticated caller: its tenant, and the (public) id of the key it used."""

    tenant: str
    key_id: str


class Authenticator:
    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    async def authenticate(self, presented: str | None) -> Caller:
        """The caller presenting ``presented``; Unauthenticated when missing, unknown or revoked."""
        key_id = key_id_of(presented) if presented else None
        found = await self._store.key_by_id(key_id) if key_id else None
        if found is None or key_id is None:
            keys_match(presented or "", _DECOY_DIGEST)
            raise Unauthenticated(missing=presented is None)
        record, digest = found
        if not keys_match(presented or "", digest) or record.revoked_at is not None:
            raise Unauthenticated()
        return Caller(record.tenant, key_id)
