"""The ``FollowerStateStore`` port on PostgreSQL: each network's last read, across restarts."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from service.domain import BlockRef, FollowerState
from service.store.announced import decode_announced, encode_announced
from service.store.postgres.database import PostgresDatabase

if TYPE_CHECKING:
    from service.ports import FollowerStateStore

__all__ = ["PostgresFollowerStateStore"]


class PostgresFollowerStateStore:
    """``FollowerStateStore`` on the shared ``PostgresDatabase`` (``follower_state``).

    Amounts are decimal strings in JSON, as in SQLite (uint256 exceeds ``bigint``).
    """

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database

    async def load_follower_state(self, network: str) -> FollowerState | None:
        row = await self._database.fetchrow(
            "SELECT block_number, block_hash, block_timestamp, balances::text AS balances,"
            " announced::text AS announced FROM follower_state WHERE network = $1",
            network,
        )
        if row is None:
            return None
        balances = {
            address: {symbol: int(raw) for symbol, raw in amounts.items()}
            for address, amounts in json.loads(row["balances"]).items()
        }
        block = BlockRef(network, row["block_number"], row["block_hash"], row["block_timestamp"])
        announced, reorgs = decode_announced(row["announced"])
        return FollowerState(block, balances, announced, reorgs)

    async def save_follower_state(self, state: FollowerState) -> None:
        balances = {
            address: {symbol: str(raw) for symbol, raw in amounts.items()}
            for address, amounts in state.balances.items()
        }
        block = state.block
        await self._database.execute(
            "INSERT INTO follower_state"
            " (network, block_number, block_hash, block_timestamp, balances, announced)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb) ON CONFLICT (network) DO UPDATE SET"
            " block_number = excluded.block_number, block_hash = excluded.block_hash,"
            " block_timestamp = excluded.block_timestamp, balances = excluded.balances,"
            " announced = excluded.announced",
            block.network,
            block.number,
            block.hash,
            block.timestamp,
            json.dumps(balances),
            encode_announced(state.announced, state.reorgs),
        )


if TYPE_CHECKING:
    _: type[FollowerStateStore] = PostgresFollowerStateStore  # checked by mypy
