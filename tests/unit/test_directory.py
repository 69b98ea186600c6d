"""The wallet directory without a database server: reading import files, and SQLite's own
schema and file (migrations, PRAGMAs, a newer schema refused).

The store's behaviour (imports all or nothing, conflicts, lookups, tenants, concurrent
writers) runs on SQLite and PostgreSQL in tests/integration/test_directory_store.py.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import ImportRejected, InvalidArgument, SchemaTooNew
from service.importfile import read_wallet_file
from service.records import WalletRow, new_wallet_id
from service.store.sqlite import open_sqlite_stores
from service.store.sqlite.migrations import MIGRATIONS, migrate, schema_version
from tests.support.wallet_files import (
    ADDR_1,
    ADDR_2,
    ADDR_3,
    ASSIGNED_ID,
    BAD_CHECKSUM,
    NETWORKS,
    TENANT_A,
    entry,
    write_json,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dirs" / "wallets.sqlite3"


# ---------------------------------------------------------------- good files


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


@pytest.mark.parametrize(
    ("bad_row", "message"), [case[1:] for case in BAD_JSON_ROWS], ids=[c[0] for c in BAD_JSON_ROWS]
)
def test_bad_json_row_is_named(tmp_path: Path, bad_row: dict[str, Any], message: str) -> None:
    """Each kind of bad row, by its row number (that a store is left untouched by it is in
    tests/integration/test_directory_store.py)."""
    path = write_json(tmp_path / "w.json", [entry(address=ADDR_2), entry(address=ADDR_3), bad_row])
    with pytest.raises(ImportRejected) as rejected:
        read_wallet_file(path, NETWORKS)
    assert rejected.value.row == 3
    assert str(rejected.value).startswith("row 3: ")
    assert message in str(rejected.value)


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


# ---------------------------------------------------------------- SQLite's schema and file


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
        assert schema_version(connection) == len(MIGRATIONS) == 7
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(wallets)")}
        assert "wallets_by_customer" in indexes

    reopened = await open_sqlite_stores(db_path)
    try:
        assert (await reopened.wallets.get_wallet(TENANT_A, "wal_1")).address == ADDR_1
    finally:
        await reopened.aclose()
    with closing(sqlite3.connect(db_path)) as connection:
        assert schema_version(connection) == 7


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


# ---------------------------------------------------------------- properties


def test_new_wallet_ids_are_well_formed_and_distinct() -> None:
    ids = {new_wallet_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(ASSIGNED_ID.fullmatch(wallet_id) for wallet_id in ids)


WELL_FORMED_WALLET_ID = st.from_regex(r"wal_[A-Za-z0-9_]{1,64}", fullmatch=True)
WELL_FORMED_CUSTOMER_ID = st.from_regex(r"cus_[A-Za-z0-9_]{1,64}", fullmatch=True)


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
