"""What a webhook event says: its type, its ID and its exact JSON body."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from service.domain import BalanceChange, BlockRef
from service.money import format_amount

__all__ = [
    "BALANCE_UPDATED",
    "EVENT_TYPES",
    "balance_updated_body",
    "event_id",
    "rfc3339",
]

BALANCE_UPDATED = "balance.updated"
EVENT_TYPES = (BALANCE_UPDATED,)


def event_id(tenant: str, wallet_id: str, block: BlockRef, change: BalanceChange) -> str:
    """``msg_`` + 32 hex digits: the ``webhook-id`` of every send of one event.

    Derived from the change itself (128 bits of SHA-256), so whichever process
    detects it, and however often (a new leader reading the block again after a
    crash), it is enqueued under one id, which the outbox keeps once.  A reorg
    correction's id also covers its reorg number: never the id of an earlier event,
    even one with the same block, amounts and wallet (a chain flipping back).
    """
    fields = [
        BALANCE_UPDATED,
        tenant,
        wallet_id,
        block.network,
        change.currency,
        block.hash,
        str(change.previous),
        str(change.current),
    ]
    if change.reorg:  # ordinary ids stay as they always were
        fields += ["reorg", str(change.reorg)]
    digest = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()
    return "msg_" + digest[:32]


def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, ``Z``: ``2024-01-15T10:30:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def balance_updated_body(
    *,
    wallet_id: str,
    customer_id: str,
    block: BlockRef,
    change: BalanceChange,
    created_at: datetime,
) -> str:
    """The JSON body of one ``balance.updated`` event: compact, keys in a fixed order.

    This string is stored once and is, byte for byte, what is signed and sent on
    every attempt.  A reorg correction adds ``"reorged": true``: ``previous_balance``
    is then the announced value a reorg replaced, ``balance`` the canonical one.
    """
    body: dict[str, Any] = {
        "type": BALANCE_UPDATED,
        "data": {
            "wallet_id": wallet_id,
            "customer_id": customer_id,
            "balance": format_amount(change.current, change.decimals),
            "previous_balance": format_amount(change.previous, change.decimals),
            "currency": change.currency,
            "network": block.network,
            "block_number": block.number,
            "block_hash": block.hash,
            "timestamp": rfc3339(datetime.fromtimestamp(block.timestamp, UTC)),
            **({"reorged": True} if change.reorg else {}),
        },
        "createdAt": int(created_at.timestamp() * 1000),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
