"""The ``announced`` column of ``follower_state`` (both backends): a follower's recent
announcements and its reorg count, as JSON."""

from __future__ import annotations

import json
from typing import Any

from service.domain import AnnouncedBlock

__all__ = ["decode_announced", "encode_announced"]


def encode_announced(blocks: tuple[AnnouncedBlock, ...], reorgs: int) -> str:
    """``{"reorgs": n, "blocks": [[number, hash, [[address, currency], ...]], ...]}``."""
    doc: dict[str, Any] = {
        "reorgs": reorgs,
        "blocks": [[b.number, b.hash, sorted([a, c] for a, c in b.keys)] for b in blocks],
    }
    return json.dumps(doc, separators=(",", ":"))


def decode_announced(text: str) -> tuple[tuple[AnnouncedBlock, ...], int]:
    """``(blocks, reorgs)``; ``'{}'`` (a row written before the column existed) is empty."""
    doc = json.loads(text)
    blocks = tuple(
        AnnouncedBlock(int(number), str(block_hash), frozenset((str(a), str(c)) for a, c in keys))
        for number, block_hash, keys in doc.get("blocks", ())
    )
    return blocks, int(doc.get("reorgs", 0))
