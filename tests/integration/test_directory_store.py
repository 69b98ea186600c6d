"""The wallet directory on both backends (``backend``: SQLite and PostgreSQL): imports all
or nothing, conflicts with stored data, idempotence, lookups, tenant scoping, reopening,
concurrent writers, and arbitrary IDs.

Reading import files without a store, and SQLite's own schema and file, are in
tests/unit/test_directory.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain import Wallet
from service.errors import CustomerNotFound, ImportRejected, InvalidArgument, WalletNotFound
from service.importfile import import_wallet_file
from service.ports import WalletDirectory
from service.records import WalletRow
from service.store.stores import Stores, open_stores_at
from tests.support.clock import StepClock
from tests.support.databases import PostgresServer
from tests.support.store_backends import BACKENDS, StoreBackend, store_backend
from tests.support.wallet_files import (
    ADDR_1,
    ADDR_2,
    ADDR_3,
    ADDR_4,
    ASSIGNED_ID,
    BAD_CHECKSUM,
    NETWORKS,
    TENANT_A,
    TENANT_B,
    entry,
    write_csv,
    write_json,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return store_backend(request, tmp_path)


@pytest_asyncio.fixture(loop_scope="session")
async def stores(backend: StoreBackend) -> AsyncIterator[Stores]:
    async with await backend.open() as opened:
        yield opened


@pytest.fixture
def directory(stores: Stores) -> WalletDirectory:
    return stores.wallets


# ---------------------------------------------------------------- good files


@ASYNC
async def test_import_json_list(directory: WalletDirectory, tmp_path: Path) -> None:
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


@ASYNC
async def test_import_json_wallets_object(directory: WalletDirectory, tmp_path: Path) -> None:
    path = write_json(tmp_path / "w.JSON", {"wallets": [entry(wallet_id="wal_a")]})
    (wallet,) = await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert wallet.wallet_id == "wal_a"
    assert await directory.customer_wallets(TENANT_A, "cus_1") == [wallet]


@ASYNC
async def test_import_csv(
    directory: WalletDirectory, backend: StoreBackend, tmp_path: Path
) -> None:
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
    assert await backend.count("wallets") == 2


# ---------------------------------------------------------------- bad rows

BAD_JSON_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("malformed customer id", entry(customer_id="cust_1"), "customer_id 'cust_1' is malformed"),
    ("unknown network", entry(network="solana"), "network 'solana' is unknown"),
    ("bad checksum", entry(address=BAD_CHECKSUM), "fails its EIP-55 checksum"),
    ("missing field", {"customer_id": "cus_1", "network": "ethereum"}, "address is missing"),
    ("not an object", "cus_1", "expected an object"),  # type: ignore[list-item]
]


@ASYNC
@pytest.mark.parametrize(
    ("bad_row", "message"), [case[1:] for case in BAD_JSON_ROWS], ids=[c[0] for c in BAD_JSON_ROWS]
)
async def test_bad_json_row_rejects_whole_file(
    directory: WalletDirectory,
    backend: StoreBackend,
    tmp_path: Path,
    bad_row: dict[str, Any],
    message: str,
) -> None:
    """Rows are all checked before any is written (every kind of bad row is read in
    tests/unit/test_directory.py): a bad third row leaves the store as it was."""
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
    assert await backend.count("wallets") == 1
    with pytest.raises(CustomerNotFound):
        await directory.customer_wallets(TENANT_A, "cus_1")


@ASYNC
async def test_csv_bad_row_names_data_row(
    directory: WalletDirectory, backend: StoreBackend, tmp_path: Path
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
    assert await backend.count("wallets") == 0


# ---------------------------------------------------------------- conflicts with stored data


@ASYNC
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
    directory: WalletDirectory,
    backend: StoreBackend,
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
    assert await backend.count("wallets") == 1
    assert "cus_1" not in str(rejected.value)


@ASYNC
async def test_directory_row_numbers_map_to_csv_rows(
    directory: WalletDirectory, tmp_path: Path
) -> None:
    await directory.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1)])
    path = tmp_path / "w.csv"
    path.write_text(f"customer_id,network,address\n\n\ncus_2,ethereum,{ADDR_1}\n")
    with pytest.raises(ImportRejected) as rejected:
        await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert rejected.value.row == 3


@ASYNC
async def test_import_wallets_is_all_or_nothing(
    directory: WalletDirectory, backend: StoreBackend
) -> None:
    rows = [
        WalletRow("cus_1", "ethereum", ADDR_1),
        WalletRow("cus_1", "ethereum", ADDR_2),
        WalletRow("cus_2", "ethereum", ADDR_1),  # conflicts with row 1, same import
    ]
    with pytest.raises(ImportRejected) as rejected:
        await directory.import_wallets(TENANT_A, rows)
    assert rejected.value.row == 3
    assert await backend.count("wallets") == 0
    assert await directory.import_wallets(TENANT_A, []) == []


# ---------------------------------------------------------------- idempotence


@ASYNC
async def test_reimport_is_idempotent(
    directory: WalletDirectory, backend: StoreBackend, tmp_path: Path
) -> None:
    path = write_json(
        tmp_path / "w.json",
        [entry(wallet_id="wal_given"), entry(address=ADDR_2), entry(address=ADDR_3.lower())],
    )
    first = await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    second = await import_wallet_file(directory, path, TENANT_A, NETWORKS)
    assert second == first
    assert await backend.count("wallets") == 3

    # Naming the assigned ID explicitly is the same wallet too.
    again = await directory.import_wallets(
        TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_2, first[1].wallet_id)]
    )
    assert again == [first[1]]
    assert await backend.count("wallets") == 3


# ---------------------------------------------------------------- lookups and tenants


@ASYNC
async def test_lookups(directory: WalletDirectory) -> None:
    await directory.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_1")])
    with pytest.raises(WalletNotFound, match=r"^wallet wal_nope not found$"):
        await directory.get_wallet(TENANT_A, "wal_nope")
    with pytest.raises(CustomerNotFound, match=r"^customer cus_nope not found$"):
        await directory.customer_wallets(TENANT_A, "cus_nope")
    with pytest.raises(InvalidArgument, match="wallet_id"):
        await directory.get_wallet(TENANT_A, "1; DROP TABLE wallets")
    with pytest.raises(InvalidArgument, match="customer_id"):
        await directory.customer_wallets(TENANT_A, "wal_1")


async def customer_order(stores: Stores) -> list[Wallet]:
    """Import cus_1's wallets in four steps (StepClock: one second apart); its list."""
    await stores.wallets.import_wallets(TENANT_A, [WalletRow("cus_1", "polygon", ADDR_1, "wal_a")])
    await stores.wallets.import_wallets(
        TENANT_A,
        [
            WalletRow("cus_1", "ethereum", ADDR_2, "wal_z"),
            WalletRow("cus_1", "ethereum", ADDR_3, "wal_y"),
            WalletRow("cus_1", "ethereum", ADDR_4, "wal_Z"),
        ],
    )
    await stores.wallets.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_b")])
    await stores.wallets.import_wallets(TENANT_A, [WalletRow("cus_2", "polygon", ADDR_4, "wal_c")])
    return await stores.wallets.customer_wallets(TENANT_A, "cus_1")


# ethereum first; within it by created_at, then wallet_id in byte order (wal_Z, wal_y, wal_z
# share a timestamp; "Z" < "y" < "z" in bytes, as SQLite compares; a language's collation
# would put wal_Z last).
ORDER = ["wal_Z", "wal_y", "wal_z", "wal_b", "wal_a"]


@ASYNC
async def test_customer_wallets_order(backend: StoreBackend) -> None:
    async with await backend.open(clock=StepClock()) as stores:
        wallets = await customer_order(stores)
    assert [w.wallet_id for w in wallets] == ORDER
    assert wallets[0].created_at == datetime(2024, 1, 15, 10, 30, 2, tzinfo=UTC)


@ASYNC
async def test_postgresql_orders_in_bytes_in_a_database_with_a_language_collation(
    postgres: PostgresServer,
) -> None:
    """The databases of the other tests use the C locale (tests/support/databases.py); a
    production database is more likely en-US.  Identifiers compare as bytes all the same."""
    name = f"balances_icu_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url())
    try:
        await admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            " LOCALE 'C.UTF-8'"
        )
    finally:
        await admin.close()
    url = postgres.url(name)
    connection = await asyncpg.connect(url)
    try:  # the database does sort words by language, case last
        words = await connection.fetch("SELECT w FROM unnest($1::text[]) AS w ORDER BY w", ORDER)
        assert [row["w"] for row in words] == ["wal_a", "wal_b", "wal_y", "wal_z", "wal_Z"]
    finally:
        await connection.close()
    async with await open_stores_at(Path("unused"), url, clock=StepClock()) as stores:
        wallets = await customer_order(stores)
        page = await stores.wallets.list_wallets(TENANT_A, "cus_1", after=None, limit=10)
    assert [w.wallet_id for w in wallets] == ORDER
    assert [w.wallet_id for w in page] == ["wal_a", "wal_Z", "wal_y", "wal_z", "wal_b"]


@ASYNC
async def test_tenant_scoping(directory: WalletDirectory) -> None:
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


# ---------------------------------------------------------------- persistence


@ASYNC
async def test_persistence_across_reopen(backend: StoreBackend) -> None:
    first = await backend.open()
    try:
        wallets = await first.wallets.import_wallets(
            TENANT_A,
            [WalletRow("cus_1", "ethereum", ADDR_1), WalletRow("cus_1", "polygon", ADDR_2)],
        )
    finally:
        await first.aclose()
    await first.aclose()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        await first.wallets.get_wallet(TENANT_A, "wal_uncached")
    with pytest.raises(RuntimeError, match="closed"):
        await first.wallets.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_3)])

    second = await backend.open()
    try:
        assert await second.wallets.customer_wallets(TENANT_A, "cus_1") == wallets
        assert wallets[0].created_at.utcoffset() == timedelta(0)
    finally:
        await second.aclose()


# ---------------------------------------------------------------- concurrency


@ASYNC
async def test_concurrent_imports_of_one_row_make_one_wallet(
    directory: WalletDirectory, backend: StoreBackend
) -> None:
    row = WalletRow("cus_1", "ethereum", ADDR_1)
    results = await asyncio.gather(*(directory.import_wallets(TENANT_A, [row]) for _ in range(50)))
    assert len({wallets[0] for wallets in results}) == 1
    assert await backend.count("wallets") == 1


@ASYNC
async def test_concurrent_imports_through_two_connections(
    directory: WalletDirectory, backend: StoreBackend
) -> None:
    other = await backend.open()
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
    assert await backend.count("wallets") == 1


@ASYNC
async def test_cancelled_caller_does_not_break_the_directory(
    directory: WalletDirectory, backend: StoreBackend
) -> None:
    cancelled = 0
    for pause in range(6):  # cancelled before, during and after the write's round trips
        task = asyncio.create_task(
            directory.import_wallets(TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_1")])
        )
        for _ in range(pause):
            await asyncio.sleep(0)
        task.cancel()
        # A fast store may finish the import within the pause: that write simply happened.
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled += task.cancelled()
    assert cancelled >= 1  # pause 0 always cancels before the first round trip
    # The write either happened or not, atomically; the directory keeps working.
    (wallet,) = await directory.import_wallets(
        TENANT_A, [WalletRow("cus_1", "ethereum", ADDR_1, "wal_1")]
    )
    assert wallet.wallet_id == "wal_1"
    assert await backend.count("wallets") == 1


# ---------------------------------------------------------------- arbitrary IDs

WELL_FORMED_WALLET_ID = st.from_regex(r"wal_[A-Za-z0-9_]{1,64}", fullmatch=True)
WELL_FORMED_CUSTOMER_ID = st.from_regex(r"cus_[A-Za-z0-9_]{1,64}", fullmatch=True)


def run_with_directory(
    backend: StoreBackend, check: Callable[[WalletDirectory, Any], Coroutine[Any, Any, None]]
) -> Callable[[st.SearchStrategy[Any]], None]:
    """A synchronous hypothesis driver around one wallet directory on its own event loop."""

    def drive(strategy: st.SearchStrategy[Any]) -> None:
        with asyncio.Runner() as runner:
            stores = runner.run(backend.open())
            try:

                @settings(max_examples=150, deadline=None, database=None)
                @given(strategy)
                def property_holds(value: Any) -> None:
                    runner.run(check(stores.wallets, value))

                property_holds()
            finally:
                runner.run(stores.aclose())

    return drive


async def lookup_any_wallet_id(directory: WalletDirectory, value: str) -> None:
    try:
        await directory.get_wallet(TENANT_A, value)
    except WalletNotFound:
        assert re.fullmatch(r"wal_[A-Za-z0-9_]{1,64}", value)
    except InvalidArgument as error:
        assert not re.fullmatch(r"wal_[A-Za-z0-9_]{1,64}", value)
        assert len(str(error)) < 200


async def lookup_any_customer_id(directory: WalletDirectory, value: str) -> None:
    try:
        await directory.customer_wallets(TENANT_A, value)
    except CustomerNotFound:
        assert re.fullmatch(r"cus_[A-Za-z0-9_]{1,64}", value)
    except InvalidArgument as error:
        assert len(str(error)) < 200


# Not async: hypothesis drives an event loop of its own.
def test_arbitrary_wallet_ids_only_raise_invalid_argument_or_not_found(
    backend: StoreBackend,
) -> None:
    run_with_directory(backend, lookup_any_wallet_id)(st.text() | WELL_FORMED_WALLET_ID)


def test_arbitrary_customer_ids_only_raise_invalid_argument_or_not_found(
    backend: StoreBackend,
) -> None:
    run_with_directory(backend, lookup_any_customer_id)(st.text() | WELL_FORMED_CUSTOMER_ID)
