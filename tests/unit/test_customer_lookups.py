"""A customer's wallets in O(the customer's wallets), whatever the size of the tenant.

The plan is read with EXPLAIN QUERY PLAN from the statement the store really
runs (caught by a trace callback), and the work of one lookup is counted in
SQLite virtual-machine steps (a progress handler called on every step): a scan
of the tenant costs several steps per wallet of the tenant, a range over the
customer's index entries a few per wallet of the customer.  No timings here
(scripts/hot_path_figures.py measures them).  SQLite's own planner and statistics:
PostgreSQL's counterpart is tests/integration/test_customer_lookups_postgresql.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import pytest_asyncio

from service.addresses import parse_address
from service.records import WalletRow
from service.store.sqlite import SqliteStores, open_sqlite_stores
from service.store.sqlite.migrations import MIGRATIONS, migrate
from service.store.sqlite.wallets import CUSTOMER_WALLETS
from tests.support.cli import OFFLINE_CONFIG, balances_main

ASYNC = pytest.mark.asyncio(loop_scope="session")

TENANT = "acme"
CUSTOMER = "cus_ten"  # 10 wallets, among 100,000 of the same tenant
TENANT_WALLETS = 100_000
PLANNED = 20_000  # wallets for the plan tests: plans follow statistics, not sizes
STAMP = "2024-01-15T10:30:00.000000Z"
PLAN = "SEARCH wallets USING INDEX wallets_by_customer (tenant=? AND customer_id=?)"


def wallet_rows(count: int = TENANT_WALLETS) -> Iterator[tuple[str, ...]]:
    """``count`` wallets of one tenant over two networks: 10 of CUSTOMER, the rest 5 each."""
    for n in range(count):
        customer = CUSTOMER if n < 10 else f"cus_{n // 5:06d}"
        network = ("ethereum", "polygon")[n % 2]
        yield (f"wal_{n:07d}", TENANT, customer, network, f"0x{n:040x}", STAMP)


def insert_wallets(connection: sqlite3.Connection, rows: Iterator[tuple[str, ...]]) -> None:
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO wallets VALUES (?, ?, ?, ?, ?, ?)", rows)
    connection.execute("COMMIT")


def plan_of(connection: sqlite3.Connection, statement: str, *parameters: object) -> list[str]:
    rows = connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
    return [row[3] for row in rows]


class StepCounter:
    """Counts SQLite virtual-machine steps once installed as a connection's progress handler."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self) -> int:
        self.steps += 1
        return 0  # go on

    def install(self, connection: sqlite3.Connection) -> None:
        connection.set_progress_handler(self, 1)

    @staticmethod
    def remove(connection: sqlite3.Connection) -> None:
        connection.set_progress_handler(None, 1)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "wallets.sqlite3"


@pytest_asyncio.fixture(loop_scope="session")
async def big_tenant(db_path: Path) -> AsyncIterator[SqliteStores]:
    """A migrated store whose tenant holds 100,000 wallets, never analyzed since."""
    async with await open_sqlite_stores(db_path) as stores:
        await stores.database.run(insert_wallets, wallet_rows())
        await stores.database.run(lambda c: c.execute("DELETE FROM sqlite_stat1"))
        yield stores


@ASYNC
async def test_the_store_runs_the_planned_statement(db_path: Path) -> None:
    statements: list[str] = []
    async with await open_sqlite_stores(db_path) as stores:
        await stores.database.run(insert_wallets, wallet_rows(20))
        await stores.database.run(lambda c: c.set_trace_callback(statements.append))
        await stores.wallets.customer_wallets(TENANT, CUSTOMER)
    selects = [s for s in statements if s.startswith("SELECT")]
    assert len(selects) == 1
    assert selects[0].startswith(CUSTOMER_WALLETS.split(" WHERE ")[0])
    assert "ORDER BY network, created_at, wallet_id" in selects[0]


@pytest.mark.parametrize("statistics", ["none", "fresh", "stale"])
@ASYNC
async def test_customer_lookup_is_one_index_range_with_any_statistics(
    db_path: Path, statistics: str
) -> None:
    async with await open_sqlite_stores(db_path) as stores:

        def prepare(connection: sqlite3.Connection) -> list[str]:
            connection.execute("DELETE FROM sqlite_stat1")
            if statistics == "stale":  # analyzed when the tenant was one small customer
                insert_wallets(connection, wallet_rows(10))
                connection.execute("ANALYZE")
                rest = (row for n, row in enumerate(wallet_rows(PLANNED)) if n >= 10)
                insert_wallets(connection, rest)
            else:
                insert_wallets(connection, wallet_rows(PLANNED))
            if statistics == "fresh":
                connection.execute("ANALYZE")
            return plan_of(connection, CUSTOMER_WALLETS, TENANT, CUSTOMER)

        plan = await stores.database.run(prepare)
    assert plan == [PLAN]  # no SCAN, and no TEMP B-TREE: the index holds the order too


@ASYNC
async def test_a_10_wallet_customer_visits_its_rows_not_the_tenants(
    big_tenant: SqliteStores, tmp_path: Path
) -> None:
    counter = StepCounter()
    await big_tenant.database.run(counter.install)
    try:
        found = await big_tenant.wallets.customer_wallets(TENANT, CUSTOMER)
    finally:
        await big_tenant.database.run(StepCounter.remove)
    assert len(found) == 10
    assert counter.steps < 1_000  # a few dozen steps per wallet of the customer, at most

    # The counter does see a scan: the same statement on the schema before the fix
    # (version 4, not analyzed, as every database was) visits the whole tenant.
    with closing(sqlite3.connect(tmp_path / "v4.sqlite3", isolation_level=None)) as old:
        migrate(old, MIGRATIONS[:4])
        insert_wallets(old, wallet_rows())
        assert plan_of(old, CUSTOMER_WALLETS, TENANT, CUSTOMER) != [PLAN]
        old_counter = StepCounter()
        old_counter.install(old)
        assert len(old.execute(CUSTOMER_WALLETS, (TENANT, CUSTOMER)).fetchall()) == 10
        StepCounter.remove(old)
    assert old_counter.steps > TENANT_WALLETS


@ASYNC
async def test_a_large_import_refreshes_the_statistics(db_path: Path) -> None:
    rows = [
        WalletRow(f"cus_{n // 4:04d}", "polygon", parse_address(f"0x{n + 1:040x}"))
        for n in range(1000)
    ]
    async with await open_sqlite_stores(db_path) as stores:
        await stores.wallets.import_wallets(TENANT, rows)

        def statistics(connection: sqlite3.Connection) -> dict[str, str]:
            found = connection.execute(
                "SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'wallets'"
            ).fetchall()
            return dict(found)

        stats = await stores.database.run(statistics)
    # "rows, rows per tenant, per (tenant, customer), ..." as ANALYZE counted them.
    assert stats["wallets_by_customer"].split()[:3] == ["1000", "1000", "4"]


def test_db_migrate_brings_a_version_4_database_forward_and_analyzes_it(tmp_path: Path) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG)  # directory: wallets.sqlite3 next to it
    path = tmp_path / "wallets.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        migrate(connection, MIGRATIONS[:4])
        insert_wallets(connection, wallet_rows(20_000))
    code, stdout, stderr = balances_main("db", "migrate", "--config", str(config), cwd=tmp_path)
    assert code == 0, stderr
    assert stdout.strip().endswith(f"schema version {len(MIGRATIONS)}")
    with closing(sqlite3.connect(path)) as connection:
        columns = [row[2] for row in connection.execute("PRAGMA index_info(wallets_by_customer)")]
        assert columns == ["tenant", "customer_id", "network", "created_at", "wallet_id"]
        analyzed = connection.execute(
            "SELECT stat FROM sqlite_stat1 WHERE idx = 'wallets_by_customer'"
        ).fetchone()
        # Sampled (analysis_limit): an estimate of the 20,000 rows, not the empty table.
        assert analyzed is not None and int(analyzed[0].split()[0]) > 10_000
        assert plan_of(connection, CUSTOMER_WALLETS, TENANT, CUSTOMER) == [PLAN]
        assert connection.execute("SELECT COUNT(*) FROM wallets").fetchone()[0] == 20_000
