"""The stores behind the wallet registry: register/list/delete wallets, API keys, schema.

Every behaviour test runs against SQLite and PostgreSQL (``backend``); the file and
schema tests at the end are SQLite's own."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from service import children
from service.auth.keys import hash_key, new_api_key
from service.domain import Wallet
from service.errors import AlreadyExists, InvalidArgument, NotFound, WalletNotFound
from service.records import WalletCursor, WalletRow
from service.store.sqlite import SqliteStores, open_sqlite_stores
from service.store.sqlite.migrations import MIGRATIONS, migrate, schema_version
from service.store.stores import Stores
from tests.support.clock import StepClock
from tests.support.store_backends import BACKENDS, StoreBackend, store_backend

pytestmark = pytest.mark.asyncio(loop_scope="session")

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
ADDR_1 = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0x9876543210987654321098765432109876543210"
ADDR_3 = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"
ADDRESSES = [f"0x{index:040x}" for index in range(1, 10)]  # all digits: checksummed as is


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return store_backend(request, tmp_path)


@pytest_asyncio.fixture
async def stores(backend: StoreBackend) -> AsyncIterator[Stores]:
    async with await backend.open() as opened:
        yield opened


@pytest_asyncio.fixture
async def sqlite_stores(db_path: Path) -> AsyncIterator[SqliteStores]:
    async with await open_sqlite_stores(db_path) as opened:
        yield opened


def wallet_count(path: Path) -> int:
    with closing(sqlite3.connect(path)) as connection:
        count: int = connection.execute("SELECT COUNT(*) FROM wallets").fetchone()[0]
    return count


# ---------------------------------------------------------------- register_wallet


async def test_register_is_idempotent_for_the_same_customer(
    stores: Stores,
) -> None:
    wallet, created = await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1)
    assert created
    assert wallet.wallet_id.startswith("wal_") and len(wallet.wallet_id) == 28
    assert (wallet.tenant, wallet.customer_id, wallet.network, wallet.address) == (
        TENANT_A,
        "cus_1",
        "polygon",
        ADDR_1,
    )
    again, created_again = await stores.wallets.register_wallet(
        TENANT_A, "cus_1", "polygon", ADDR_1
    )
    assert (again, created_again) == (wallet, False)
    assert await stores.wallets.get_wallet(TENANT_A, wallet.wallet_id) == wallet

    # Same address on another network is another wallet.
    other_network, created = await stores.wallets.register_wallet(
        TENANT_A, "cus_1", "ethereum", ADDR_1
    )
    assert created and other_network.wallet_id != wallet.wallet_id


async def test_register_for_another_customer_of_the_tenant_already_exists(
    stores: Stores, backend: StoreBackend
) -> None:
    await stores.wallets.register_wallet(TENANT_A, "cus_owner_secret", "polygon", ADDR_1)
    with pytest.raises(AlreadyExists) as raised:
        await stores.wallets.register_wallet(TENANT_A, "cus_2", "polygon", ADDR_1)
    message = str(raised.value)
    assert "polygon" in message and ADDR_1 in message
    assert "cus_owner_secret" not in message
    assert "wal_" not in message
    assert await backend.count("wallets") == 1


async def test_other_tenants_register_the_same_address_independently(
    stores: Stores,
) -> None:
    mine, _ = await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1)
    # B's customer has A's customer's ID *and* another one: neither clashes with A.
    theirs, created = await stores.wallets.register_wallet(TENANT_B, "cus_2", "polygon", ADDR_1)
    assert created and theirs.wallet_id != mine.wallet_id
    same_id, created = await stores.wallets.register_wallet(TENANT_B, "cus_1", "ethereum", ADDR_1)
    assert created
    assert await stores.wallets.customer_wallets(TENANT_A, "cus_1") == [mine]
    assert await stores.wallets.customer_wallets(TENANT_B, "cus_2") == [theirs]
    assert await stores.wallets.customer_wallets(TENANT_B, "cus_1") == [same_id]
    with pytest.raises(WalletNotFound):
        await stores.wallets.get_wallet(TENANT_B, mine.wallet_id)


async def test_register_validates_its_arguments(stores: Stores) -> None:
    with pytest.raises(InvalidArgument, match="customer_id"):
        await stores.wallets.register_wallet(TENANT_A, "customer-1", "polygon", ADDR_1)
    with pytest.raises(InvalidArgument, match="checksummed"):
        await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1.lower())
    with pytest.raises(InvalidArgument, match="network"):
        await stores.wallets.register_wallet(TENANT_A, "cus_1", "", ADDR_1)


async def test_concurrent_registrations_of_one_row_make_one_wallet(
    stores: Stores, backend: StoreBackend
) -> None:
    results = await asyncio.gather(
        *(stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1) for _ in range(50))
    )
    assert len({wallet.wallet_id for wallet, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert await backend.count("wallets") == 1


async def test_concurrent_registrations_through_two_connections(
    stores: Stores, backend: StoreBackend
) -> None:
    other = await backend.open()
    try:
        results = await asyncio.gather(
            *(
                directory.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1)
                for _ in range(25)
                for directory in (stores, other)
            )
        )
    finally:
        await other.aclose()
    assert len({wallet.wallet_id for wallet, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert await backend.count("wallets") == 1


_REGISTER_IN_A_PROCESS = """
import asyncio, sys
from pathlib import Path
from service.store.stores import open_stores_at

async def main():
    # argv[1]: the SQLite file, or a PostgreSQL URL
    target = sys.argv[1]
    url = target if target.startswith("postgresql://") else None
    directory = await open_stores_at(Path(target), url)
    try:
        results = await asyncio.gather(*(
            directory.wallets.register_wallet(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
            for _ in range(10)
        ))
    finally:
        await directory.aclose()
    for wallet, created in results:
        print(wallet.wallet_id, int(created))

asyncio.run(main())
"""


async def test_concurrent_registrations_from_several_processes(
    stores: Stores, backend: StoreBackend
) -> None:
    async def run() -> str:
        process = await children.create_subprocess_exec(
            sys.executable,
            "-c",
            _REGISTER_IN_A_PROCESS,
            backend.url or str(backend.path),
            TENANT_A,
            "cus_1",
            "polygon",
            ADDR_1,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        return out.decode()

    outputs = await asyncio.gather(*(run() for _ in range(4)))
    lines = [line.split() for output in outputs for line in output.splitlines()]
    assert len(lines) == 40
    assert len({wallet_id for wallet_id, _ in lines}) == 1
    assert [created for _, created in lines].count("1") == 1
    assert await backend.count("wallets") == 1
    ((wallet, created),) = [
        await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1)
    ]
    assert (wallet.wallet_id, created) == (lines[0][0], False)


# ---------------------------------------------------------------- list_wallets


async def all_pages(
    stores: Stores, tenant: str, customer_id: str, page_size: int
) -> list[list[Wallet]]:
    pages: list[list[Wallet]] = []
    cursor: WalletCursor | None = None
    while True:
        page = await stores.wallets.list_wallets(tenant, customer_id, after=cursor, limit=page_size)
        assert len(page) <= page_size
        if not page:
            return pages
        pages.append(page)
        cursor = WalletCursor(page[-1].created_at, page[-1].wallet_id)
        assert len(pages) < 100, "paging does not end"


async def test_list_pages_cover_every_wallet_exactly_once(backend: StoreBackend) -> None:
    stores = await backend.open(clock=StepClock())
    try:
        # Four wallets share one created_at (one import); three more come one second apart.
        batch = await stores.wallets.import_wallets(
            TENANT_A, [WalletRow("cus_1", "polygon", address) for address in ADDRESSES[:4]]
        )
        assert len({wallet.created_at for wallet in batch}) == 1
        singles = [
            (await stores.wallets.register_wallet(TENANT_A, "cus_1", "ethereum", address))[0]
            for address in ADDRESSES[4:7]
        ]
        # Noise that must never show: another customer, another tenant.
        await stores.wallets.register_wallet(TENANT_A, "cus_2", "ethereum", ADDRESSES[7])
        await stores.wallets.register_wallet(TENANT_B, "cus_1", "ethereum", ADDRESSES[8])

        expected = sorted(batch, key=lambda w: w.wallet_id) + singles
        for page_size in (1, 2, 3, 7, 100):
            pages = await all_pages(stores, TENANT_A, "cus_1", page_size)
            flat = [wallet for page in pages for wallet in page]
            assert flat == expected, page_size
            assert all(len(page) == page_size for page in pages[:-1])

        assert await stores.wallets.list_wallets(TENANT_A, "cus_nobody", after=None, limit=10) == []
        assert [w.address for w in await all_pages_flat(stores, TENANT_B, "cus_1")] == [
            ADDRESSES[8]
        ]
        # A cursor past the end gives an empty page.
        last = expected[-1]
        cursor = WalletCursor(last.created_at, last.wallet_id)
        assert await stores.wallets.list_wallets(TENANT_A, "cus_1", after=cursor, limit=5) == []
    finally:
        await stores.aclose()


async def all_pages_flat(stores: Stores, tenant: str, customer_id: str) -> list[Wallet]:
    return [w for page in await all_pages(stores, tenant, customer_id, 2) for w in page]


async def test_list_rejects_malformed_customer_and_limit(stores: Stores) -> None:
    with pytest.raises(InvalidArgument):
        await stores.wallets.list_wallets(TENANT_A, "nope", after=None, limit=1)
    with pytest.raises(ValueError, match="limit"):
        await stores.wallets.list_wallets(TENANT_A, "cus_1", after=None, limit=0)


# ---------------------------------------------------------------- delete_wallet


async def test_delete_then_get_is_not_found(stores: Stores) -> None:
    wallet, _ = await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1)
    kept, _ = await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_2)
    assert await stores.wallets.delete_wallet(TENANT_A, "cus_1", wallet.wallet_id) == wallet
    with pytest.raises(WalletNotFound):
        await stores.wallets.get_wallet(TENANT_A, wallet.wallet_id)
    assert await stores.wallets.customer_wallets(TENANT_A, "cus_1") == [kept]
    with pytest.raises(WalletNotFound):
        await stores.wallets.delete_wallet(TENANT_A, "cus_1", wallet.wallet_id)
    # The address is free again, under a new ID.
    again, created = await stores.wallets.register_wallet(TENANT_A, "cus_2", "polygon", ADDR_1)
    assert created and again.wallet_id != wallet.wallet_id


async def test_delete_by_another_customer_or_tenant_is_not_found_and_deletes_nothing(
    stores: Stores, backend: StoreBackend
) -> None:
    wallet, _ = await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1)
    messages = set()
    for tenant, customer_id, wallet_id in (
        (TENANT_A, "cus_2", wallet.wallet_id),  # another customer of the tenant
        (TENANT_B, "cus_1", wallet.wallet_id),  # another tenant, same customer ID
        (TENANT_A, "cus_1", "wal_nothere"),  # no such wallet
    ):
        with pytest.raises(WalletNotFound) as raised:
            await stores.wallets.delete_wallet(tenant, customer_id, wallet_id)
        messages.add(str(raised.value).replace(wallet_id, "ID"))
    assert messages == {"wallet ID not found"}
    assert await stores.wallets.get_wallet(TENANT_A, wallet.wallet_id) == wallet
    assert await backend.count("wallets") == 1
    with pytest.raises(InvalidArgument):
        await stores.wallets.delete_wallet(TENANT_A, "cus_1", "not-a-wallet")


# ---------------------------------------------------------------- API keys


async def test_key_store_add_look_up_revoke_list(backend: StoreBackend) -> None:
    stores = await backend.open(clock=StepClock())
    try:
        first, second, other = new_api_key(), new_api_key(), new_api_key()
        record = await stores.api_keys.add_key(first.key_id, TENANT_A, first.digest)
        assert (record.key_id, record.tenant, record.revoked_at) == (first.key_id, TENANT_A, None)
        await stores.api_keys.add_key(second.key_id, TENANT_A, second.digest)
        await stores.api_keys.add_key(other.key_id, TENANT_B, other.digest)

        assert await stores.api_keys.key_by_id(first.key_id) == (record, first.digest)
        assert await stores.api_keys.key_by_id("000000000000") is None

        revoked = await stores.api_keys.revoke_key(first.key_id)
        assert revoked.revoked_at is not None and revoked.revoked_at > record.created_at
        assert await stores.api_keys.revoke_key(first.key_id) == revoked  # idempotent, time kept
        found = await stores.api_keys.key_by_id(first.key_id)
        assert found is not None and found == (revoked, first.digest)
        with pytest.raises(NotFound):
            await stores.api_keys.revoke_key("000000000000")

        assert [k.key_id for k in await stores.api_keys.list_keys(TENANT_A)] == [
            first.key_id,
            second.key_id,
        ]
        assert [k.key_id for k in await stores.api_keys.list_keys(TENANT_B)] == [other.key_id]
        assert [k.key_id for k in await stores.api_keys.list_keys()] == [
            first.key_id,
            second.key_id,
            other.key_id,
        ]
        assert await stores.api_keys.list_keys("tenant-c") == []
        assert (await stores.api_keys.list_keys(TENANT_A))[0] == revoked
    finally:
        await stores.aclose()


async def test_key_store_refuses_bad_input(stores: Stores) -> None:
    key = new_api_key()
    await stores.api_keys.add_key(key.key_id, TENANT_A, key.digest)
    with pytest.raises(AlreadyExists):
        await stores.api_keys.add_key(key.key_id, TENANT_B, new_api_key().digest)
    with pytest.raises(InvalidArgument, match="tenant"):
        await stores.api_keys.add_key("aaaaaaaaaaaa", "Bad Tenant", key.digest)
    with pytest.raises(ValueError, match="32 bytes"):
        await stores.api_keys.add_key("bbbbbbbbbbbb", TENANT_A, key.plaintext.encode())
    assert [k.key_id for k in await stores.api_keys.list_keys()] == [key.key_id]


async def test_only_the_digest_of_a_key_is_stored(stores: Stores, backend: StoreBackend) -> None:
    keys = [new_api_key() for _ in range(5)]
    for key in keys:
        await stores.api_keys.add_key(key.key_id, TENANT_A, key.digest)
    await stores.aclose()
    rows = await backend.fetch(
        "SELECT key_id, tenant, digest, created_at, revoked_at FROM api_keys"
    )
    by_id = {key.key_id: key for key in keys}
    assert len(rows) == len(keys)
    for row in rows:
        key = by_id[row[0]]
        assert isinstance(row[2], bytes) and row[2] == hash_key(key.plaintext)
        for value in row:
            assert key.plaintext not in str(value)
    if backend.url is not None:
        return  # PostgreSQL's files are the server's; SQLite's are checked below
    # Nowhere in the file either (nor its WAL), in any encoding of the secret.
    files = b"".join(path.read_bytes() for path in backend.path.parent.iterdir() if path.is_file())
    for key in keys:
        secret = key.plaintext.split("_", 2)[2]
        assert secret.encode() not in files
        assert key.plaintext.encode("utf-16-le") not in files


# ---------------------------------------------------------------- persistence and schema


async def test_wallets_and_keys_persist_across_reopen(backend: StoreBackend) -> None:
    key = new_api_key()
    first = await backend.open()
    try:
        wallet, _ = await first.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_3)
        record = await first.api_keys.add_key(key.key_id, TENANT_A, key.digest)
    finally:
        await first.aclose()
    second = await backend.open()
    try:
        assert await second.wallets.get_wallet(TENANT_A, wallet.wallet_id) == wallet
        assert await second.wallets.list_wallets(TENANT_A, "cus_1", after=None, limit=5) == [wallet]
        assert await second.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_3) == (
            wallet,
            False,
        )
        assert await second.api_keys.key_by_id(key.key_id) == (record, key.digest)
    finally:
        await second.aclose()


async def test_migrates_an_empty_database(db_path: Path) -> None:
    await asyncio.to_thread(db_path.touch)  # an existing, empty file
    stores = await open_sqlite_stores(db_path)
    try:
        assert await stores.database.schema_version() == len(MIGRATIONS) == 7
        key = new_api_key()
        await stores.api_keys.add_key(key.key_id, TENANT_A, key.digest)
    finally:
        await stores.aclose()
    with closing(sqlite3.connect(db_path)) as connection:
        assert schema_version(connection) == 7
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"wallets", "api_keys", "wallets_by_customer_page"} <= tables
        columns = [row[1] for row in connection.execute("PRAGMA table_info(api_keys)")]
        assert columns == ["key_id", "tenant", "digest", "created_at", "revoked_at"]


async def test_migrates_a_version_1_database_keeping_its_wallets(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path, isolation_level=None)) as connection:
        assert migrate(connection, MIGRATIONS[:1]) == 1
        connection.executemany(
            "INSERT INTO wallets VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("wal_old_1", TENANT_A, "cus_1", "polygon", ADDR_1, "2023-05-01T00:00:00.000000Z"),
                ("wal_old_2", TENANT_A, "cus_1", "ethereum", ADDR_1, "2023-05-02T00:00:00.000000Z"),
                ("wal_old_3", TENANT_B, "cus_9", "polygon", ADDR_2, "2023-05-03T00:00:00.000000Z"),
            ],
        )
    stores = await open_sqlite_stores(db_path)
    try:
        assert await stores.database.schema_version() == 7
        old = await stores.wallets.list_wallets(TENANT_A, "cus_1", after=None, limit=10)
        assert [w.wallet_id for w in old] == ["wal_old_1", "wal_old_2"]
        assert old[0].created_at == datetime(2023, 5, 1, tzinfo=UTC)
        assert (await stores.wallets.get_wallet(TENANT_B, "wal_old_3")).address == ADDR_2
        assert await stores.wallets.register_wallet(TENANT_A, "cus_1", "polygon", ADDR_1) == (
            old[0],
            False,
        )
        key = new_api_key()
        await stores.api_keys.add_key(key.key_id, TENANT_A, key.digest)
        assert [k.key_id for k in await stores.api_keys.list_keys()] == [key.key_id]
    finally:
        await stores.aclose()
    assert wallet_count(db_path) == 3
