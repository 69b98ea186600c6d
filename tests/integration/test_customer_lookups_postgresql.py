"""PostgreSQL's counterpart of tests/unit/test_customer_lookups.py: a customer's wallets in
O(the customer's wallets), whatever the size of the tenant.

The plan is read with EXPLAIN from the statement the store runs (``CUSTOMER_WALLETS``),
as the planner makes it for given values and as the generic plan of a prepared statement
(asyncpg prepares and caches every statement; PostgreSQL may switch it to the generic
plan after five runs).  The work of one lookup is counted in buffer pages touched
(EXPLAIN ANALYZE, BUFFERS): a scan of the tenant reads every page of the table, an index
range a few.  No timings here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from service.addresses import parse_address
from service.records import WalletRow
from service.store.postgres import open_postgres_stores
from service.store.postgres.wallets import CUSTOMER_WALLETS

ASYNC = pytest.mark.asyncio(loop_scope="session")

TENANT = "acme"
CUSTOMER = "cus_ten"  # 10 wallets, among 100,000 of the same tenant
TENANT_WALLETS = 100_000
STAMP = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
COLUMNS = ["wallet_id", "tenant", "customer_id", "network", "address", "created_at"]


def wallet_rows(count: int, start: int = 0) -> Iterator[tuple[object, ...]]:
    """Wallets ``start``..``count`` of one tenant over two networks: 10 of CUSTOMER, the
    rest 5 per customer."""
    for n in range(start, count):
        customer = CUSTOMER if n < 10 else f"cus_{n // 5:06d}"
        network = ("ethereum", "polygon")[n % 2]
        yield (f"wal_{n:07d}", TENANT, customer, network, f"0x{n:040x}", STAMP)


async def insert_wallets(connection: Any, rows: Iterator[tuple[object, ...]]) -> None:
    await connection.copy_records_to_table("wallets", records=list(rows), columns=COLUMNS)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, top first."""
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


async def explain(connection: Any, options: str = "") -> dict[str, Any]:
    """The plan of the customer lookup for (TENANT, CUSTOMER)."""
    found = await connection.fetchval(
        f"EXPLAIN (FORMAT JSON{options}) {CUSTOMER_WALLETS}", TENANT, CUSTOMER
    )
    return dict(json.loads(found)[0]["Plan"])


async def generic_plan(connection: Any) -> dict[str, Any]:
    """The plan a prepared statement gets when PostgreSQL stops planning per value."""
    await connection.execute("SET plan_cache_mode = force_generic_plan")
    await connection.execute(f"PREPARE lookup (text, text) AS {CUSTOMER_WALLETS}")
    try:
        found = await connection.fetchval(
            f"EXPLAIN (FORMAT JSON) EXECUTE lookup ('{TENANT}', '{CUSTOMER}')"
        )
    finally:
        await connection.execute("DEALLOCATE lookup")
        await connection.execute("RESET plan_cache_mode")
    return dict(json.loads(found)[0]["Plan"])


def assert_one_index_range(plan: dict[str, Any]) -> None:
    kinds = [node["Node Type"] for node in nodes(plan)]
    # One range over the customer's index entries: no scan of the table, and no Sort (the
    # index holds the order too; a bitmap scan would lose it).
    assert kinds == ["Index Scan"], kinds
    assert plan["Index Name"] == "wallets_by_customer"
    assert "Filter" not in plan  # both columns are index conditions, not a row filter


@pytest_asyncio.fixture(loop_scope="session")
async def connection(postgres_url: str) -> AsyncIterator[Any]:
    """A migrated database (the store opened it) and a connection of the test's own,
    with autovacuum off for ``wallets``: its statistics change only when a test says so."""
    stores = await open_postgres_stores(postgres_url)
    await stores.aclose()
    opened = await asyncpg.connect(postgres_url)
    try:
        await opened.execute("ALTER TABLE wallets SET (autovacuum_enabled = false)")
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize("statistics", ["fresh", "as migrated", "after a large import"])
@ASYNC
async def test_customer_lookup_is_one_index_range_with_any_statistics(
    postgres_url: str, connection: Any, statistics: str
) -> None:
    if statistics == "after a large import":  # the store's import analyzes the table
        await insert_wallets(connection, wallet_rows(TENANT_WALLETS - 1000))
        rows = [
            WalletRow(customer_id, network, parse_address(address), wallet_id)
            for wallet_id, _, customer_id, network, address, _ in wallet_rows(
                TENANT_WALLETS, start=TENANT_WALLETS - 1000
            )
        ]
        async with await open_postgres_stores(postgres_url) as stores:
            await stores.wallets.import_wallets(TENANT, rows)
    else:
        await insert_wallets(connection, wallet_rows(TENANT_WALLETS))
        if statistics == "fresh":
            await connection.execute("ANALYZE wallets")
    assert_one_index_range(await explain(connection))
    assert_one_index_range(await generic_plan(connection))


@ASYNC
async def test_stale_statistics_are_refreshed_by_autovacuum(connection: Any) -> None:
    """Where PostgreSQL differs from SQLite.  Analyzed when the whole table was one small
    customer, the statistics say every row is that tenant's and that customer's, and
    PostgreSQL's cost-based planner then scans and sorts (SQLite, since schema version 6,
    takes the index whatever its statistics say).  PostgreSQL's autovacuum re-analyzes a
    table once more than 50 rows + 10 % of it changed since the last analysis: the table
    qualifies at once, and the plan is the index range again after that ANALYZE."""
    await insert_wallets(connection, wallet_rows(10))
    await connection.execute("ANALYZE wallets")
    await insert_wallets(connection, wallet_rows(TENANT_WALLETS, start=10))
    await connection.execute("SELECT pg_stat_force_next_flush()")
    stale = await explain(connection)
    assert [node["Node Type"] for node in nodes(stale)] == ["Sort", "Seq Scan"]

    assert await connection.fetchval("SHOW autovacuum") == "on"  # the server's default
    changed, analyzed_rows = await connection.fetchrow(
        "SELECT s.n_mod_since_analyze, c.reltuples FROM pg_stat_user_tables s"
        " JOIN pg_class c ON c.oid = s.relid WHERE s.relname = 'wallets'"
    )
    threshold = float(await connection.fetchval("SHOW autovacuum_analyze_threshold"))
    scale = float(await connection.fetchval("SHOW autovacuum_analyze_scale_factor"))
    assert changed > threshold + scale * analyzed_rows  # autovacuum's next round analyzes it

    await connection.execute("ANALYZE wallets")  # what that round does
    assert_one_index_range(await explain(connection))
    assert_one_index_range(await generic_plan(connection))


@ASYNC
async def test_a_10_wallet_customer_visits_its_pages_not_the_tenants(
    postgres_url: str, connection: Any
) -> None:
    await insert_wallets(connection, wallet_rows(TENANT_WALLETS))
    await connection.execute("ANALYZE wallets")
    async with await open_postgres_stores(postgres_url) as stores:
        found = await stores.wallets.customer_wallets(TENANT, CUSTOMER)
    assert [w.wallet_id for w in found] == [f"wal_{n:07d}" for n in (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)]

    plan = await explain(connection, ", ANALYZE, BUFFERS")
    assert plan["Actual Rows"] == 10
    touched = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    assert touched < 20  # a few index pages and the heap pages of ten rows

    # The count does see a scan: without the index, the same lookup reads the whole table.
    pages = await connection.fetchval("SELECT relpages FROM pg_class WHERE relname = 'wallets'")
    without_index = connection.transaction()
    await without_index.start()
    try:
        await connection.execute("DROP INDEX wallets_by_customer, wallets_by_customer_page")
        scan = await explain(connection, ", ANALYZE, BUFFERS")
    finally:
        await without_index.rollback()
    assert "Seq Scan" in [node["Node Type"] for node in nodes(scan)]
    scanned = scan["Shared Hit Blocks"] + scan["Shared Read Blocks"]
    assert scanned >= pages > 500


@ASYNC
async def test_a_large_import_refreshes_the_statistics(postgres_url: str, connection: Any) -> None:
    async def counted() -> float:
        return float(
            await connection.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'wallets'")
        )

    before = await counted()  # analyzed empty at migration (or never: -1)
    rows = [
        WalletRow(f"cus_{n // 4:04d}", "polygon", parse_address(f"0x{n + 1:040x}"))
        for n in range(1000)
    ]
    async with await open_postgres_stores(postgres_url) as stores:
        await stores.wallets.import_wallets(TENANT, rows[:999])
        assert await counted() == before  # below the threshold: left to autovacuum
        await stores.wallets.import_wallets(TENANT, rows)  # 1 new: still not
        assert await counted() == before
        await stores.wallets.import_wallets("globex", rows)  # 1000 new
    # ANALYZE counted every row (a table this small is read whole, not sampled).
    assert await counted() == 2000
