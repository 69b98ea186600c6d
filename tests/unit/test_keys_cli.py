"""``balances keys ...`` and ``balances db migrate`` in-process, through ``cli.main``."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from service.auth.keys import hash_key, key_id_of, keys_match
from service.records import ApiKeyRecord
from service.store.sqlite import open_sqlite_stores
from service.store.sqlite.migrations import MIGRATIONS, migrate, schema_version
from tests.support.cli import OFFLINE_CONFIG, assert_one_line_error, balances_main

ADDRESS = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "balances.toml"
    path.write_text(OFFLINE_CONFIG)  # directory: wallets.sqlite3 next to it
    return path


def create_key(config: Path, tenant: str) -> str:
    code, stdout, stderr = balances_main(
        "keys", "create", "--tenant", tenant, "--config", str(config), cwd=config.parent
    )
    assert code == 0, stderr
    return stdout


def stored_keys(config: Path, *key_ids: str) -> list[tuple[ApiKeyRecord, bytes] | None]:
    """What the key store holds for each of ``key_ids``: (record, digest), or None."""

    async def read() -> list[tuple[ApiKeyRecord, bytes] | None]:
        stores = await open_sqlite_stores(config.parent / "wallets.sqlite3")
        try:
            return [await stores.api_keys.key_by_id(key_id) for key_id in key_ids]
        finally:
            await stores.aclose()

    return asyncio.run(read())


def test_create_prints_the_key_once_and_stores_only_its_digest(config: Path) -> None:
    code, stdout, stderr = balances_main(
        "keys", "create", "--tenant", "acme", "--config", str(config), cwd=config.parent
    )
    assert code == 0, stderr
    # stdout is the key alone on its line, for `KEY=$(balances keys create ...)`.
    assert stdout.endswith("\n") and stdout.count("\n") == 1
    key = stdout.strip()
    key_id = key_id_of(key)
    assert key_id is not None
    assert key not in stderr
    human = [line for line in stderr.splitlines() if line.startswith("created API key")]
    assert len(human) == 1 and key_id in human[0] and "acme" in human[0]

    (found,) = stored_keys(config, key_id)
    assert found is not None
    record, digest = found
    assert (record.key_id, record.tenant, record.revoked_at) == (key_id, "acme", None)
    assert digest == hash_key(key) and keys_match(key, digest)


def test_each_create_makes_a_new_key(config: Path) -> None:
    first = create_key(config, "acme")
    second = create_key(config, "acme")
    assert first != second and key_id_of(first.strip()) != key_id_of(second.strip())


def test_list_shows_ids_tenants_and_times_never_keys_or_digests(config: Path) -> None:
    keys = {
        tenant: [create_key(config, tenant).strip() for _ in range(2)]
        for tenant in ("acme", "globex")
    }
    secrets = [key for tenant_keys in keys.values() for key in tenant_keys]
    forbidden = [
        text
        for key in secrets
        for text in (
            key,
            key.split("_", 2)[2],  # the secret part alone
            hash_key(key).hex(),
            hash_key(key).hex().upper(),
            hash_key(key).hex()[:16],
        )
    ]

    code, stdout, stderr = balances_main("keys", "list", "--config", str(config), cwd=config.parent)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].split() == ["KEY", "ID", "TENANT", "CREATED", "REVOKED"]
    rows = [line.split() for line in lines[1:]]
    assert [(row[0], row[1], row[3]) for row in rows] == [
        (key_id_of(key), tenant, "-") for tenant, tenant_keys in keys.items() for key in tenant_keys
    ]
    for text in forbidden:
        assert text not in stdout + stderr

    code, stdout, stderr = balances_main(
        "keys", "list", "--tenant", "globex", "--config", str(config), cwd=config.parent
    )
    assert code == 0, stderr
    assert [line.split()[0] for line in stdout.splitlines()[1:]] == [
        key_id_of(key) for key in keys["globex"]
    ]
    for text in forbidden:
        assert text not in stdout + stderr


def test_revoke_marks_the_key_and_is_idempotent(config: Path) -> None:
    key = (create_key(config, "acme")).strip()
    kept = (create_key(config, "acme")).strip()
    key_id = key_id_of(key)
    assert key_id is not None

    outputs = []
    for _ in range(2):
        code, stdout, stderr = balances_main(
            "keys", "revoke", key_id, "--config", str(config), cwd=config.parent
        )
        assert code == 0, stderr
        assert key_id in stdout and "acme" in stdout
        assert key not in stdout + stderr
        outputs.append(stdout)
    assert outputs[0] == outputs[1]  # the first revocation's time is kept

    code, stdout, _ = balances_main("keys", "list", "--config", str(config), cwd=config.parent)
    assert code == 0
    revoked = {line.split()[0]: line.split()[3] for line in stdout.splitlines()[1:]}
    assert revoked[key_id] != "-" and revoked[key_id_of(kept)] == "-"

    found, still = stored_keys(config, key_id, str(key_id_of(kept)))
    assert found is not None and found[0].revoked_at is not None
    assert still is not None and still[0].revoked_at is None

    code, stdout, stderr = balances_main(
        "keys", "revoke", "0123456789ab", "--config", str(config), cwd=config.parent
    )
    assert code == 1 and stdout == ""
    assert stderr.splitlines()[-1] == "balances: API key 0123456789ab not found"


@pytest.mark.parametrize(
    "tenant", ["", "Acme", "-acme", "_acme", "a" * 65, "ac me", "acme/x", "acmé", "acme\n"]
)
def test_bad_tenant_name_exits_non_zero_with_one_line(config: Path, tenant: str) -> None:
    wallets = config.parent / "wallets.csv"
    wallets.write_text(f"customer_id,network,address\ncus_1,polygon,{ADDRESS}\n")
    option = f"--tenant={tenant}"  # "--tenant -acme" would be argparse's usage error instead
    commands = [
        ("keys", "create", option),
        ("keys", "list", option),
        ("wallets", "import", str(wallets), option),
    ]
    results = [
        balances_main(*command, "--config", str(config), cwd=config.parent) for command in commands
    ]
    for code, stdout, stderr in results:
        line = assert_one_line_error(code, stderr, "tenant name", "is malformed")
        assert line.startswith("balances: ")
        assert code == 1 and stdout == ""
    assert not (config.parent / "wallets.sqlite3").exists()  # nothing was opened


def test_good_tenant_names_are_accepted(config: Path) -> None:
    for tenant in ("a", "0", "acme-eu_2", "a" * 64):
        assert key_id_of(create_key(config, tenant).strip()) is not None


def test_db_migrate_brings_a_version_1_database_to_the_latest(config: Path) -> None:
    path = config.parent / "wallets.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        migrate(connection, MIGRATIONS[:1])
        connection.execute(
            "INSERT INTO wallets VALUES ('wal_1', 'acme', 'cus_1', 'polygon', ?, ?)",
            (ADDRESS, "2024-01-15T10:30:00.000000Z"),
        )
    for _ in range(2):  # and again: nothing left to do
        code, stdout, stderr = balances_main(
            "db", "migrate", "--config", str(config), cwd=config.parent
        )
        assert code == 0, stderr
        assert stdout.strip().endswith(f"schema version {len(MIGRATIONS)}")
        assert "wallets.sqlite3" in stdout
    with closing(sqlite3.connect(path)) as connection:
        assert schema_version(connection) == len(MIGRATIONS) == 7
        assert connection.execute("SELECT wallet_id FROM wallets").fetchall() == [("wal_1",)]


def test_db_migrate_creates_a_new_database(config: Path) -> None:
    code, stdout, stderr = balances_main(
        "db", "migrate", "--config", str(config), cwd=config.parent
    )
    assert code == 0, stderr
    assert stdout.strip().endswith(f"schema version {len(MIGRATIONS)}")
    with closing(sqlite3.connect(config.parent / "wallets.sqlite3")) as connection:
        assert schema_version(connection) == len(MIGRATIONS)
