"""What changed between a follower's last read and a new snapshot (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Mapping

from service.domain import BalanceChange, Snapshot

__all__ = ["compare"]


def compare(
    before: Mapping[str, Mapping[str, int]],
    snapshot: Snapshot,
    decimals: Mapping[str, int],
) -> tuple[list[BalanceChange], list[str]]:
    """``(changes, fresh)``: every raw amount that differs from ``before``, and the
    addresses ``before`` did not hold (read for the first time: a baseline, no change)."""
    changes: list[BalanceChange] = []
    fresh: list[str] = []
    for address, balances in snapshot.balances.items():
        previous_balances = before.get(address)
        if previous_balances is None:
            fresh.append(address)
            continue
        for currency, current in balances.items():
            previous = previous_balances.get(currency)
            if previous is not None and previous != current:
                changes.append(
                    BalanceChange(
                        snapshot.network, address, currency, decimals[currency], previous, current
                    )
                )
    return changes, fresh
