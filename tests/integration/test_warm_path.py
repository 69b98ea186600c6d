"""The warm path on a running server: no SQL per warm call, and changes still seen.

SQL is watched with a trace callback on the server's own SQLite connection.
Changes made through the API take effect on the next call; changes made by
another process (the ``balances`` console script) within the caches' max lag.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2
from service.store.cached import DEFAULT_MAX_LAG_SECONDS
from tests.support.cli import run_balances
from tests.support.stack import Stack, keyed_channel
from tests.support.tenancy_kit import Stubs, key_id, new_key, outcome

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NEW_ADDRESS = "0xd3e0000000000000000000000000000000000009"  # funded by nobody: all zeros


@asynccontextmanager
async def sql_seen(stack: Stack) -> AsyncIterator[list[str]]:
    """Every statement the server runs meanwhile, but the caches' change checks."""
    statements: list[str] = []

    def seen(statement: str) -> None:
        if statement != "PRAGMA data_version":
            statements.append(statement)

    def trace(connection: sqlite3.Connection) -> None:
        connection.set_trace_callback(seen)

    def untrace(connection: sqlite3.Connection) -> None:
        connection.set_trace_callback(None)

    await stack.service.stores.database.run(trace)
    try:
        yield statements
    finally:
        await stack.service.stores.database.run(untrace)


def customer_wallet_ids(response: pb.GetCustomerBalancesResponse) -> list[str]:
    return [w.wallet_id for w in response.wallets]


async def test_warm_calls_run_no_sql_and_misses_still_do(stack: Stack) -> None:
    wallets = Stubs(stack.keyed).wallets
    wallet = pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    customer = pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    get = wallets_pb2.GetWalletRequest(customer_id="cus_alice", wallet_id="wal_alice_polygon")
    await stack.stub.GetWalletBalance(wallet)
    await stack.stub.GetCustomerBalances(customer)
    await wallets.GetWallet(get)
    stack.reset_counts()
    async with sql_seen(stack) as statements:
        for _ in range(10):
            await stack.stub.GetWalletBalance(wallet)
            await stack.stub.GetCustomerBalances(customer)
            await wallets.GetWallet(get)
    assert statements == []
    assert stack.eth_calls() == {"polygon": 0, "ethereum": 0}
    # The trace does see the store at work: an unknown wallet is looked up every time.
    async with sql_seen(stack) as statements:
        for _ in range(3):
            code, _, _ = await outcome(
                stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_nobody"))
            )
            assert code == grpc.StatusCode.NOT_FOUND
    assert len([s for s in statements if "FROM wallets" in s]) == 3


async def test_a_deletion_through_the_api_is_effective_on_the_next_call(stack: Stack) -> None:
    wallet = pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    customer = pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    await stack.stub.GetWalletBalance(wallet)
    before = await stack.stub.GetCustomerBalances(customer)
    assert customer_wallet_ids(before) == ["wal_alice_ethereum", "wal_alice_polygon"]
    await Stubs(stack.keyed).wallets.DeleteWallet(
        wallets_pb2.DeleteWalletRequest(customer_id="cus_alice", wallet_id="wal_alice_polygon")
    )
    code, _, _ = await outcome(stack.stub.GetWalletBalance(wallet))
    assert code == grpc.StatusCode.NOT_FOUND
    after = await stack.stub.GetCustomerBalances(customer)
    assert customer_wallet_ids(after) == ["wal_alice_ethereum"]


async def test_an_import_through_the_api_is_effective_on_the_next_call(stack: Stack) -> None:
    customer = pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    await stack.stub.GetCustomerBalances(customer)
    imported = await Stubs(stack.keyed).wallets.ImportWallet(
        wallets_pb2.ImportWalletRequest(
            customer_id="cus_alice", network="polygon", address=NEW_ADDRESS
        )
    )
    after = await stack.stub.GetCustomerBalances(customer)
    assert imported.wallet.wallet_id in customer_wallet_ids(after)
    assert len(after.wallets) == 3


async def test_a_revocation_by_another_process_is_refused_within_the_max_lag(
    stack: Stack,
) -> None:
    key = await new_key(stack, "default")
    request = pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    async with keyed_channel(stack.target, key) as channel:
        stub = Stubs(channel).balances
        await stub.GetWalletBalance(request)  # the key's record is now cached
        code, _, stderr = await run_balances(
            "keys", "revoke", key_id(key), "--config", str(stack.config_path), cwd=stack_dir(stack)
        )
        assert code == 0, stderr
        # Whatever the cache saw before, a check is due once max_lag has passed.
        await asyncio.sleep(DEFAULT_MAX_LAG_SECONDS)
        code, _, _ = await outcome(stub.GetWalletBalance(request))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    await stack.stub.GetWalletBalance(request)  # the stack's own key is untouched


async def test_an_import_by_another_process_is_seen_within_the_max_lag(
    stack: Stack, tmp_path: Path
) -> None:
    customer = pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    await stack.stub.GetCustomerBalances(customer)  # the customer's list is now cached
    wallets_file = tmp_path / "more-wallets.json"
    wallets_file.write_text(
        json.dumps(
            [
                {
                    "customer_id": "cus_alice",
                    "network": "polygon",
                    "address": NEW_ADDRESS,
                    "wallet_id": "wal_alice_more",
                }
            ]
        )
    )
    code, _, stderr = await run_balances(
        *("wallets", "import", str(wallets_file), "--tenant", "default"),
        *("--config", str(stack.config_path)),
        cwd=stack_dir(stack),
    )
    assert code == 0, stderr
    await asyncio.sleep(DEFAULT_MAX_LAG_SECONDS)
    after = await stack.stub.GetCustomerBalances(customer)
    assert "wal_alice_more" in customer_wallet_ids(after)


def stack_dir(stack: Stack) -> Path:
    return stack.config_path.parent
