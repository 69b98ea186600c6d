"""Who is calling: an API key in, a tenant out, or ``Unauthenticated`` (one message for all)."""

from __future__ import annotations

from service.auth.keys import hash_key, key_id_of, keys_match
from service.errors import Unauthenticated
from service.ports import ApiKeyStore

__all__ = ["Authenticator"]

# Compared against when the key id is unknown, so a miss costs what a hit costs.
_DECOY_DIGEST = hash_key("bk_000000000000_decoy-decoy-decoy-decoy-decoy-decoy-decoy-dec")


class Authenticator:
    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    async def tenant_of(self, presented: str | None) -> str:
        """The tenant owning ``presented``; Unauthenticated when missing, unknown or revoked."""
        key_id = key_id_of(presented) if presented else None
        found = await self._store.key_by_id(key_id) if key_id else None
        if found is None:
            keys_match(presented or "", _DECOY_DIGEST)
            raise Unauthenticated()
        record, digest = found
        if not keys_match(presented or "", digest) or record.revoked_at is not None:
            raise Unauthenticated()
        return record.tenant
