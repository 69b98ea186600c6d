"""Snapshots as bytes for a shared cache: exact, versioned by the caller's key, checked on read.

Compact JSON.  Every amount and price answer is a decimal *string* (uint256
values exceed a double, and not every JSON reader keeps big integers exact);
block numbers, timestamps and decimals are plain integers.  ``decode`` checks
the shape and types and raises ``ValueError`` on anything else, so a corrupt
or foreign value reads as a miss, never as a wrong balance.

    {"n": network, "b": block, "t": timestamp,
     "a": {address: {currency: "raw"}}, "f": {currency: ["answer", decimals, updated_at]}}
"""

from __future__ import annotations

import json
from typing import Any

from service.domain import FeedReading, Snapshot

__all__ = ["decode_snapshot", "encode_snapshot"]


def encode_snapshot(snapshot: Snapshot) -> bytes:
    doc = {
        "n": snapshot.network,
        "b": snapshot.block_number,
        "t": snapshot.block_timestamp,
        "a": {
            address: {currency: str(raw) for currency, raw in held.items()}
            for address, held in snapshot.balances.items()
        },
        "f": {
            currency: [str(feed.answer), feed.decimals, feed.updated_at]
            for currency, feed in snapshot.feeds.items()
        },
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode_snapshot(data: bytes | str) -> Snapshot:
    """The snapshot ``encode_snapshot`` wrote; ``ValueError`` for anything else."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a snapshot: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"n", "b", "t", "a", "f"}:
        raise ValueError("not a snapshot: unexpected fields")
    balances = {
        _str(address): {_str(currency): _int_text(raw) for currency, raw in _dict(held).items()}
        for address, held in _dict(doc["a"]).items()
    }
    feeds = {}
    for currency, feed in _dict(doc["f"]).items():
        if not isinstance(feed, list) or len(feed) != 3:
            raise ValueError("not a snapshot: a feed reading is not [answer, decimals, updated]")
        feeds[_str(currency)] = FeedReading(_int_text(feed[0]), _int(feed[1]), _int(feed[2]))
    return Snapshot(_str(doc["n"]), _int(doc["b"]), _int(doc["t"]), balances, feeds)


def _dict(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError("not a snapshot: an object expected")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a snapshot: a string expected")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not a snapshot: an integer expected")
    return value


def _int_text(value: Any) -> int:
    """An integer written as a decimal string (``-`` allowed: a price answer is signed)."""
    text = _str(value)
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 100:
        raise ValueError("not a snapshot: an amount is not a decimal integer")
    return int(text)
