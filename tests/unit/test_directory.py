"""The wallet directory: SQLite store, migrations, import files, tenant scoping."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import (
    CustomerNotFound,
    ImportRejected,
    InvalidArgument,
    SchemaTooNew,
    WalletNotFound,
)
from service.importfile import import_wallet_file, read_wallet_file
from service.records import WalletRow, new_wallet_id
from service.store.sqlite import SqliteStores, SqliteWalletStore, open_sqlite_stores
from service.store.sqlite.migrations import MIGRATIONS, migrate, schema_version
from tests.support.clock import StepClock

NETWORKS = frozenset({"ethereum", "polygon"})
TENANT_A = "tenant-a"
TENANT_B = "tenant-b"

# Checksummed addresses (EIP-55) and their all-lowercase forms.
ADDR_1 = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0x9876543210987654321098765432109876543210"
ADDR_3 = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"
ADDR_4 = "0xCdCDCdCdcdcdcdCdcDcDCdcDcDCdCdcdCdcDCDcD"
# ADDR_1 with one letter's case flipped: mixed case, wrong checksum.
BAD_CHECKSUM = "0x742d35CC6634c0532925A3b844BC9E7595F0BEb0"

ASSIGNED_ID = re.compile(r"wal_[0-9a-f]{24}")


# ---------------------------------------------------------------- helpers


def wallet_count(path: Path) -> int:
    """Rows in the wallets table, read with a separate connection."""
    with closing(sqlite3.connect(path)) as connection:
        count: int = connection.execute("SELECT COUNT(*) FROM wallets").fetchone()[0]
    return count


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def entry(
    customer_id: object = "cus_1", network: str = "ethereum", address: str = ADDR_1, **extra: Any
) -> dict[str, Any]:
    return {"customer_id": customer_id, "network": network, "address": address, **extra}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dirs" / "wallets.sqlite3"


@pytest_asyncio.fixture
async def directory(db_path: Path) -> AsyncIterator[SqliteWalletStore]:
    async with await open_sqlite_stores(db_path) as stores:
        yield stores.wallets


# ---------------------------------------------------------------- good files


@pytest.mark.asyncio
async def test_import_json_list(directory: SqliteWalletStore, tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "wallets.json",
        [
            entry(wallet_id="wal_poly_001", network="polygon", address=ADDR_1),
            entry(network="ethereum", address=ADDR_2.lower()),
            entry(customer_id="cus_2", address=ADDR_3.lower(), wallet_id=None),
        ],
    )
    wallets = await import_wallet_file(directory, path, TENANT_A, NETWORKS)

    assert wallets[0].wallet_id == "wal_poly_001"
    assert ASSIGNED_ID.fullmatch(wallets[1].wallet_id)
    assert ASSIGNED_ID.fullmatch(wallets[2].wallet_id)
    assert [w.address for w in wallets] == [ADDR_1, ADDR_2, ADDR_3]
    assert {w.tenant for w in wallets} == {TENANT_A}
    assert all(w.created_at.tzinfo is not None for w in wallets)
    for wallet in wallets:
        assert await directory.get_wallet(TENANT_A, wallet.wallet_id) == wallet


@pytest.mark.asyncio
async def test_import_json_wallets_object(directory: SqliteWalletStore, tmp_path: Path) -> None:
    path = write_json(tmp_path / "w.JSON", {"wallets": [entry(wallet_id="wal_a")]})
    (wallet,) = await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert wallet.wallet_id == "wal_a"
    assert await directory.customer_wallets(TENANT_A, "cus_1") == [wallet]


@pytest.mark.asyncio
async def test_import_csv(directory: SqliteWalletStore, db_path: Path, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "wallets.csv",
        ["wallet_id", "customer_id", "network", "address"],
        [
            ["wal_eth_002", "cus_1", "ethereum", ADDR_2],
            ["", "cus_1", "polygon", ADDR_1.lower()],
        ],
    )
    wallets = await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert wallets[0].wallet_id == "wal_eth_002"
    assert ASSIGNED_ID.fullmatch(wallets[1].wallet_id)
    assert wallets[1].address == ADDR_1
    assert wallet_count(db_path) == 2


def test_read_csv_without_wallet_id_column_any_order(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(f"\ufeffaddress,network,customer_id\r\n{ADDR_1},polygon,cus_9\r\n")
    assert read_wallet_file(path, NETWORKS) == [
        WalletRow(customer_id="cus_9", network="polygon", address=ADDR_1)
    ]


# ---------------------------------------------------------------- bad rows

BAD_JSON_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("malformed customer id", entry(customer_id="cust_1"), "customer_id 'cust_1' is malformed"),
    ("malformed wallet id", entry(wallet_id="wal-1"), "wallet_id 'wal-1' is malformed"),
    ("unknown network", entry(network="solana"), "network 'solana' is unknown"),
    ("bad hex", entry(address="0x" + "g" * 40), "address '0xggg"),
    ("short address", entry(address=ADDR_1[:-1]), "is malformed: expected 0x followed by 40"),
    ("bad checksum", entry(address=BAD_CHECKSUM), "fails its EIP-55 checksum"),
    ("missing field", {"customer_id": "cus_1", "network": "ethereum"}, "address is missing"),
    ("empty field", entry(network=""), "network is missing"),
    ("unknown field", entry(memo="x"), "unknown field 'memo'"),
    ("non-string value", entry(customer_id=7), "customer_id must be a string, not int"),
    ("not an object", "cus_1", "expected an object"),  # type: ignore[list-item]
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("bad_row", "message"), [case[1:] for case in BAD_JSON_ROWS], ids=[c[0] for c in BAD_JSON_ROWS]
)
async def test_bad_json_row_rejects_whole_file(
    directory: SqliteWalletStore,
    db_path: Path,
    tmp_path: Path,
    bad_row: dict[str, Any],
    message: str,
) -> None:
    await directory.import_wallets(TENANT_A, [WalletRow("cus_0", "ethereum", ADDR_4)])
    path = write_json(
        tmp_path / "w.json",
        [entry(address=ADDR_2), entry(address=ADDR_3), bad_row],
    )
    with pytest.raises(ImportRejected) as rejected:
        await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert rejected.value.row == 3
    assert str(rejected.value).startswith("row 3: ")
    assert message in str(rejected.value)
    assert wallet_count(db_path) == 1
    with pytest.raises(CustomerNotFound):
        await directory.customer_wallets(TENANT_A, "cus_1")


def test_unknown_network_message_lists_known_networks(tmp_path: Path) -> None:
    path = write_json(tmp_path / "w.json", [entry(network="Ethereum")])
    with pytest.raises(ImportRejected, match="expected one of ethereum, polygon"):
        read_wallet_file(path, NETWORKS)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [entry(wallet_id="wal_x"), entry(address=ADDR_2, wallet_id="wal_x")],
            "row 2: wallet_id wal_x duplicates row 1",
        ),
        (
            [entry(address=ADDR_1), entry(customer_id="cus_2", address=ADDR_1.lower())],
            f"row 2: address {ADDR_1} on network ethereum duplicates row 1",
        ),
    ],
    ids=["duplicate wallet id", "duplicate address (any case)"],
)
def test_duplicates_within_file(tmp_path: Path, rows: list[dict[str, Any]], message: str) -> None:
    path = write_json(tmp_path / "w.json", rows)
    with pytest.raises(ImportRejected) as rejected:
        read_wallet_file(path, NETWORKS)
    assert str(rejected.value) == message
    assert rejected.value.row == 2


def test_same_address_on_two_networks_is_fine(tmp_path: Path) -> None:
    path = write_json(tmp_path / "w.json", [entry(), entry(network="polygon")])
    assert len(read_wallet_file(path, NETWORKS)) == 2


@pytest.mark.asyncio
async def test_csv_bad_row_names_data_row(
    directory: SqliteWalletStore, db_path: Path, tmp_path: Path
) -> None:
    path = tmp_path / "w.csv"
    # Header on line 1; data rows 1, 2 (blank line, skipped but counted), 3.
    path.write_text(
        f"customer_id,network,address\ncus_1,ethereum,{ADDR_1}\n\ncus_1,ethereum,{BAD_CHECKSUM}\n"
    )
    with pytest.raises(ImportRejected) as rejected:
        await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert rejected.value.row == 3
    assert "EIP-55" in rejected.value.reason
    assert wallet_count(db_path) == 0


def test_csv_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(f"customer_id,network,address\ncus_1,ethereum,{ADDR_1},extra\n")
    with pytest.raises(ImportRejected, match=r"^row 1: expected 3 fields"):
        read_wallet_file(path, NETWORKS)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("w.json", "", "is empty"),
        ("w.csv", " \n\n", "is empty"),
        ("w.json", "[]", "holds no wallets"),
        ("w.json", '{"wallets": []}', "holds no wallets"),
        ("w.csv", "customer_id,network,address\n", "holds no wallets"),
        ("w.json", "[{", "not valid JSON"),
        ("w.json", '{"items": []}', "expected a JSON list"),
        ("w.json", "[" * 100_000, "not valid JSON"),
        ("w.csv", '"customer_id', "CSV header: not valid CSV"),
        ("w.csv", "customer_id,network\n", "missing column address"),
        ("w.csv", "customer_id,network,address,memo\n", "unknown column 'memo'"),
        ("w.csv", "customer_id,network,address,address\n", "column address appears twice"),
        ("w.txt", "anything", "unsupported file type '.txt'"),
        ("w", "anything", "unsupported file type '(none)'"),
    ],
)
def test_whole_file_problems(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ImportRejected) as rejected:
        read_wallet_file(path, NETWORKS)
    assert message in str(rejected.value)
    assert rejected.value.row is None


def test_unparseable_csv_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(f'customer_id,network,address\ncus_1,ethereum,{ADDR_1}\ncus_1,"ethereum')
    with pytest.raises(ImportRejected, match=r"^row 2: not valid CSV") as rejected:
        read_wallet_file(path, NETWORKS)
    assert rejected.value.row == 2


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ImportRejected, match=r"cannot read missing\.json") as rejected:
        read_wallet_file(tmp_path / "missing.json", NETWORKS)
    assert rejected.value.row is None
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"customer_id,network,address\ncus_\xe9,ethereum,0x\n")
    with pytest.raises(ImportRejected, match="not UTF-8"):
        read_wallet_file(latin1, NETWORKS)


# ---------------------------------------------------------------- conflicts with stored data


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("tenant", "row", "message"),
    [
        (
            TENANT_A,
            entry(customer_id="cus_other", address=ADDR_1),
            f"address {ADDR_1} on network ethereum is already registered to another customer",
        ),
        (
            TENANT_A,
            entry(address=ADDR_1, wallet_id="wal_new"),
            f"address {ADDR_1} on network ethereum is already registered as wallet wal_taken",
        ),
        (
            TENANT_A,
            entry(address=ADDR_3, wallet_id="wal_taken"),
            "wallet_id wal_taken is already registered to a different wallet",
        ),
        (
            TENANT_B,
            entry(address=ADDR_1, wallet_id="wal_taken"),
            "wallet_id wal_taken is already registered to a different wallet",
        ),
    ],
    ids=["address of another customer", "address under another id", "id taken", "id taken in A"],
)
async def test_conflict_with_stored_data_rejects_whole_file(
    directory: SqliteWalletStore,
    db_path: Path,
    tmp_path: Path,
    tenant: str,
    row: dict[str, Any],
    message: str,
) -> None:
    await directory.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_taken")])
    path = write_json(tmp_path / "w.json", [entry(address=ADDR_2), entry(address=ADDR_4), row])
    with pytest.raises(ImportRejected) as rejected:
        await import_wallet_file(directory, path, tenant, NETWORKS)
    assert str(rejected.value) == f"row 3: {message}"
    assert rejected.value.row == 3
    assert wallet_count(db_path) == 1
    assert "cus_1" not in str(rejected.value)


@pytest.mark.asyncio
async def test_directory_row_numbers_map_to_csv_rows(
    directory: SqliteWalletStore, tmp_path: Path
) -> None:
    await directory.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1)])
    path = tmp_path / "w.csv"
    path.write_text(f"customer_id,network,address\n\n\ncus_2,ethereum,{ADDR_1}\n")
    with pytest.raises(ImportRejected) as rejected:
        await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert rejected.value.row == 3


@pytest.mark.asyncio
async def test_import_wallets_is_all_or_nothing(
    directory: SqliteWalletStore, db_path: Path
) -> None:
    rows = [
        WalletRow("cus_1", "ethereum", ADDR_1),
        WalletRow("cus_1", "ethereum", ADDR_2),
        WalletRow("cus_2", "ethereum", ADDR_1),  # conflicts with row 1, same import
    ]
    with pytest.raises(ImportRejected) as rejected:
        await directory.import_wallets(TENANT_A, rows)
    assert rejected.value.row == 3
    assert wallet_count(db_path) == 0
    assert await directory.import_wallets(TENANT_A, []) == []


# ---------------------------------------------------------------- idempotence


@pytest.mark.asyncio
async def test_reimport_is_idempotent(
    directory: SqliteWalletStore, db_path: Path, tmp_path: Path
) -> None:
    path = write_json(
        tmp_path / "w.json",
        [entry(wallet_id="wal_given"), entry(address=ADDR_2), entry(address=ADDR_3.lower())],
    )
    first = await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    second = await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert second == first
    assert wallet_count(db_path) == 3

    # Naming the assigned ID explicitly is the same wallet too.
    again = await directory.import_wallets(
        TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_2, first[1].wallet_id)]
    )
    assert again == [first[1]]
    assert wallet_count(db_path) == 3


# ---------------------------------------------------------------- lookups and tenants


@pytest.mark.asyncio
async def test_lookups(directory: SqliteWalletStore) -> None:
    await directory.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_1")])
    with pytest.raises(WalletNotFound, match=r"^wallet wal_nope not found$"):
        await directory.get_wallet(TENANT_A, "wal_nope")
    with pytest.raises(CustomerNotFound, match=r"^customer cus_nope not found$"):
        await directory.customer_wallets(TENANT_A, "cus_nope")
    with pytest.raises(InvalidArgument, match="wallet_id"):
        await directory.get_wallet(TENANT_A, "1; DROP TABLE wallets")
    with pytest.raises(InvalidArgument, match="customer_id"):
        await directory.customer_wallets(TENANT_A, "wal_1")


@pytest.mark.asyncio
async def test_customer_wallets_order(db_path: Path) -> None:
    stores = await open_sqlite_stores(db_path, clock=StepClock())
    try:
        await stores.wallets.import_wallets(
            TENANT_A, [WalletRow("cus_1", "polygon", ADDR_1, "wal_a")]
        )
        await stores.wallets.import_wallets(
            TENANT_A,
            [
                WalletRow("cus_1", "ethereum", ADDR_2, "wal_z"),
                WalletRow("cus_1", "ethereum", ADDR_3, "wal_y"),
            ],
        )
        await stores.wallets.import_wallets(
            TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_b")]
        )
        await stores.wallets.import_wallets(
            TENANT_A, [WalletRow("cus_2", "ethereum", ADDR_4, "wal_c")]
        )
        wallets = await stores.wallets.customer_wallets(TENANT_A, "cus_1")
    finally:
        await stores.aclose()
    # ethereum first; within it by created_at, then wallet_id (wal_y, wal_z share a timestamp).
    assert [w.wallet_id for w in wallets] == ["wal_y", "wal_z", "wal_b", "wal_a"]
    assert wallets[0].created_at == datetime(2024, 1, 15, 10, 30, 2, tzinfo=UTC)


@pytest.mark.asyncio
async def test_tenant_scoping(directory: SqliteWalletStore) -> None:
    (wallet,) = await directory.import_wallets(
        TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_secret")]
    )
    with pytest.raises(WalletNotFound) as foreign:
        await directory.get_wallet(TENANT_B, "wal_secret")
    with pytest.raises(WalletNotFound) as unknown:
        await directory.get_wallet(TENANT_B, "wal_nothere")
    assert type(foreign.value) is type(unknown.value)
    assert str(foreign.value) == "wallet wal_secret not found"
    assert str(foreign.value).replace("wal_secret", "ID") == str(unknown.value).replace(
        "wal_nothere", "ID"
    )
    with pytest.raises(CustomerNotFound):
        await directory.customer_wallets(TENANT_B, "cus_1")

    # Tenant B may register the same address for its own customer with the same ID.
    (own,) = await directory.import_wallets(TENANT_B, [WalletRow("cus_1", "ethereum", ADDR_1)])
    assert own.wallet_id != wallet.wallet_id
    assert await directory.customer_wallets(TENANT_B, "cus_1") == [own]
    assert await directory.customer_wallets(TENANT_A, "cus_1") == [wallet]


# ---------------------------------------------------------------- persistence and schema


@pytest.mark.asyncio
async def test_persistence_across_reopen(db_path: Path) -> None:
    first = await open_sqlite_stores(db_path)
    try:
        wallets = await first.wallets.import_wallets(
            TENANT_A,
            [WalletRow("cus_1", "ethereum", ADDR_1), WalletRow("cus_1", "polygon", ADDR_2)],
        )
    finally:
        await first.aclose()
    await first.aclose()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        await first.wallets.get_wallet(TENANT_A, wallets[0].wallet_id)

    second = await open_sqlite_stores(db_path)
    try:
        assert await second.wallets.customer_wallets(TENANT_A, "cus_1") == wallets
        assert wallets[0].created_at.utcoffset() == timedelta(0)
    finally:
        await second.aclose()


@pytest.mark.asyncio
async def test_migrates_empty_database_and_reopens(db_path: Path) -> None:
    assert not db_path.parent.exists()
    stores = await open_sqlite_stores(db_path)
    try:
        foreign_keys = await stores.database.run(
            lambda connection: connection.execute("PRAGMA foreign_keys").fetchone()[0]
        )
        assert foreign_keys == 1
        await stores.wallets.import_wallets(
            TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_1")]
        )
    finally:
        await stores.aclose()
    with closing(sqlite3.connect(db_path)) as connection:
        assert schema_version(connection) == len(MIGRATIONS) == 5
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(wallets)")}
        assert "wallets_by_customer" in indexes

    reopened = await open_sqlite_stores(db_path)
    try:
        assert (await reopened.wallets.get_wallet(TENANT_A, "wal_1")).address == ADDR_1
    finally:
        await reopened.aclose()
    with closing(sqlite3.connect(db_path)) as connection:
        assert schema_version(connection) == 5


def test_adding_a_migration_applies_only_the_new_step(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)) as connection:
        first = MIGRATIONS[:1]
        assert migrate(connection, first) == 1
        connection.execute(
            "INSERT INTO wallets VALUES ('wal_1', 't', 'cus_1', 'ethereum', '0x', '2024')"
        )
        extended = [*first, ("CREATE TABLE extra (x TEXT PRIMARY KEY)",)]
        assert migrate(connection, extended) == 2
        assert migrate(connection, extended) == 2
        assert schema_version(connection) == 2
        assert connection.execute("SELECT COUNT(*) FROM wallets").fetchone()[0] == 1
        assert connection.execute("SELECT COUNT(*) FROM extra").fetchone()[0] == 0


def test_failed_migration_step_leaves_nothing(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)) as connection:
        broken = [*MIGRATIONS, ("CREATE TABLE half (x)", "NOT SQL")]
        with pytest.raises(sqlite3.OperationalError):
            migrate(connection, broken)
        assert schema_version(connection) == len(MIGRATIONS)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "half" not in tables
        assert not connection.in_transaction


@pytest.mark.asyncio
async def test_newer_schema_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db_path)) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew) as refused:
        await open_sqlite_stores(db_path)
    assert str(refused.value) == (
        f"the database at {db_path} has schema version 99,"
        f" newer than this version's {len(MIGRATIONS)}; upgrade balances"
    )
    assert (refused.value.found, refused.value.known) == (99, len(MIGRATIONS))


# ---------------------------------------------------------------- concurrency


@pytest.mark.asyncio
async def test_concurrent_imports_of_one_row_make_one_wallet(
    directory: SqliteWalletStore, db_path: Path
) -> None:
    row = WalletRow("cus_1", "ethereum", ADDR_1)
    results = await asyncio.gather(*(directory.import_wallets(TENANT_A, [row]) for _ in range(50)))
    assert len({wallets[0] for wallets in results}) == 1
    assert wallet_count(db_path) == 1


@pytest.mark.asyncio
async def test_concurrent_imports_through_two_connections(
    directory: SqliteWalletStore, db_path: Path
) -> None:
    other = await open_sqlite_stores(db_path)
    try:
        row = WalletRow("cus_1", "ethereum", ADDR_1)
        results = await asyncio.gather(
            *(
                d.import_wallets(TENANT_A, [row])
                for _ in range(20)
                for d in (directory, other.wallets)
            )
        )
    finally:
        await other.aclose()
    assert len({wallets[0].wallet_id for wallets in results}) == 1
    assert wallet_count(db_path) == 1


@pytest.mark.asyncio
async def test_cancelled_caller_does_not_break_the_directory(
    directory: SqliteWalletStore,
) -> None:
    task = asyncio.create_task(
        directory.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_1")])
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The write either happened or not, atomically; the directory keeps working.
    (wallet,) = await directory.import_wallets(
        TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_1")]
    )
    assert wallet.wallet_id == "wal_1"


# ---------------------------------------------------------------- properties


def test_new_wallet_ids_are_well_formed_and_distinct() -> None:
    ids = {new_wallet_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(ASSIGNED_ID.fullmatch(wallet_id) for wallet_id in ids)


WELL_FORMED_WALLET_ID = st.from_regex(r"wal_[A-Za-z0-9_]{1,64}", fullmatch=True)
WELL_FORMED_CUSTOMER_ID = st.from_regex(r"cus_[A-Za-z0-9_]{1,64}", fullmatch=True)


def run_with_directory(path: Path, check: Callable[[SqliteWalletStore, Any], Any]) -> Any:
    """A synchronous hypothesis driver around one wallet store on its own event loop."""

    async def open_stores() -> SqliteStores:
        return await open_sqlite_stores(path)

    def drive(strategy: st.SearchStrategy[Any]) -> None:
        with asyncio.Runner() as runner:
            stores = runner.run(open_stores())
            try:

                @settings(max_examples=150, deadline=None, database=None)
                @given(strategy)
                def property_holds(value: Any) -> None:
                    runner.run(check(stores.wallets, value))

                property_holds()
            finally:
                runner.run(stores.aclose())

    return drive


async def lookup_any_wallet_id(directory: SqliteWalletStore, value: str) -> None:
    try:
        await directory.get_wallet(TENANT_A, value)
    except WalletNotFound:
        assert re.fullmatch(r"wal_[A-Za-z0-9_]{1,64}", value)
    except InvalidArgument as error:
        assert not re.fullmatch(r"wal_[A-Za-z0-9_]{1,64}", value)
        assert len(str(error)) < 200


async def lookup_any_customer_id(directory: SqliteWalletStore, value: str) -> None:
    try:
        await directory.customer_wallets(TENANT_A, value)
    except CustomerNotFound:
        assert re.fullmatch(r"cus_[A-Za-z0-9_]{1,64}", value)
    except InvalidArgument as error:
        assert len(str(error)) < 200


def test_arbitrary_wallet_ids_only_raise_invalid_argument_or_not_found(tmp_path: Path) -> None:
    run_with_directory(tmp_path / "p.sqlite3", lookup_any_wallet_id)(
        st.text() | WELL_FORMED_WALLET_ID
    )


def test_arbitrary_customer_ids_only_raise_invalid_argument_or_not_found(tmp_path: Path) -> None:
    run_with_directory(tmp_path / "p.sqlite3", lookup_any_customer_id)(
        st.text() | WELL_FORMED_CUSTOMER_ID
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    customer_id=st.text() | WELL_FORMED_CUSTOMER_ID,
    network=st.text(),
    address=st.text() | st.just(ADDR_1) | st.just(ADDR_1.lower()),
    wallet_id=st.none() | st.text() | WELL_FORMED_WALLET_ID,
)
def test_wallet_row_accepts_or_raises_invalid_argument(
    customer_id: str, network: str, address: str, wallet_id: str | None
) -> None:
    try:
        row = WalletRow(customer_id, network, address, wallet_id)
    except InvalidArgument:
        return
    assert row.address == ADDR_1


json_values = st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.text())


@settings(max_examples=200, deadline=None, database=None)
@given(
    rows=st.lists(
        st.dictionaries(
            st.sampled_from(["wallet_id", "customer_id", "network", "address", "other"]),
            json_values | WELL_FORMED_CUSTOMER_ID | st.sampled_from(sorted(NETWORKS)),
        ),
        max_size=4,
    )
)
def test_any_json_rows_are_read_or_rejected(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]
) -> None:
    path = write_json(tmp_path_factory.mktemp("h") / "w.json", rows)
    try:
        read_wallet_file(path, NETWORKS)
    except ImportRejected as rejected:
        assert rejected.row is None or 1 <= rejected.row <= len(rows)


@settings(max_examples=200, deadline=None, database=None)
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".json", ".csv"]))
def test_any_file_content_is_read_or_rejected(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, suffix: str
) -> None:
    path = tmp_path_factory.mktemp("h") / f"w{suffix}"
    path.write_bytes(content)
    with suppress(ImportRejected):
        read_wallet_file(path, NETWORKS)
