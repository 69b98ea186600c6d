"""The ``balances`` command in-process, through ``cli.main``: config errors and wallet imports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from service.domain import DEFAULT_TENANT
from service.errors import CustomerNotFound
from service.store.sqlite import open_sqlite_stores
from tests.support.cli import OFFLINE_CONFIG, SECRET, assert_one_line_error, balances_main

ALICE = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
BOB = "0x9876543210987654321098765432109876543210"


def test_bad_config_exits_non_zero_with_one_line_naming_key_and_reason(tmp_path: Path) -> None:
    bad_type = tmp_path / "bad_type.toml"
    bad_type.write_text(OFFLINE_CONFIG.replace("chain_id = 137", 'chain_id = "137"'))
    bad_url = tmp_path / "bad_url.toml"
    bad_url.write_text(OFFLINE_CONFIG.replace("http://127.0.0.1:9/v3/", "ws://127.0.0.1:9/v3/", 1))
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(f'[[networks]]\nrpc_urls = ["https://host/{SECRET}"\n')
    missing = tmp_path / "missing.toml"
    cases = {
        bad_type: ("networks[0].chain_id", "must be of type integer"),
        bad_url: ("networks[0].rpc_urls[0]", "must be an http:// or https:// URL"),
        invalid: (str(invalid), "not valid TOML"),
        missing: (str(missing), "cannot read"),
    }
    for path, (key, reason) in cases.items():
        code, stdout, stderr = balances_main("serve", "--config", str(path), cwd=tmp_path)
        line = assert_one_line_error(code, stderr, key, reason)
        assert line.startswith("balances: configuration error: ")
        assert code == 2
        assert stdout == ""


def test_config_path_comes_from_the_environment_without_option(tmp_path: Path) -> None:
    from_env = tmp_path / "from_env.toml"
    from_env.write_text(OFFLINE_CONFIG.replace("decimals = 6", "decimals = 600"))
    code, _, stderr = balances_main("serve", cwd=tmp_path, env={"BALANCES_CONFIG": str(from_env)})
    assert_one_line_error(code, stderr, "networks[0].tokens[0].decimals", "between 0 and 255")

    # --config wins over the environment.
    (tmp_path / "other.toml").write_text("[[networks]]\n")
    code, _, stderr = balances_main(
        "serve", "--config", "other.toml", cwd=tmp_path, env={"BALANCES_CONFIG": str(from_env)}
    )
    assert_one_line_error(code, stderr, "networks[0].name", "is required")


async def _customer_addresses(directory_path: Path, customer_id: str) -> list[tuple[str, str]]:
    stores = await open_sqlite_stores(directory_path)
    try:
        wallets = await stores.wallets.customer_wallets(DEFAULT_TENANT, customer_id)
    finally:
        await stores.aclose()
    return sorted((w.network, w.address) for w in wallets)


def customer_addresses(directory_path: Path, customer_id: str) -> list[tuple[str, str]]:
    return asyncio.run(_customer_addresses(directory_path, customer_id))


def test_wallets_import_json_and_csv(tmp_path: Path) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG)
    wallets_json = tmp_path / "wallets.json"
    wallets_json.write_text(
        json.dumps(
            {
                "wallets": [
                    {
                        "wallet_id": "wal_a1",
                        "customer_id": "cus_alice",
                        "network": "polygon",
                        "address": ALICE,
                    },
                    {
                        "wallet_id": "wal_a2",
                        "customer_id": "cus_alice",
                        "network": "ethereum",
                        "address": ALICE.lower(),
                    },
                ]
            }
        )
    )
    wallets_csv = tmp_path / "wallets.csv"
    wallets_csv.write_text(f"customer_id,network,address\ncus_bob,polygon,{BOB}\n")

    code, stdout, stderr = balances_main(
        "wallets", "import", str(wallets_json), "--config", str(config), cwd=tmp_path
    )
    assert code == 0, stderr
    assert "imported 2 wallets" in stdout
    code, stdout, stderr = balances_main(
        "wallets", "import", "wallets.csv", "--config", str(config), cwd=tmp_path
    )
    assert code == 0, stderr
    assert "imported 1 wallets" in stdout

    directory_path = tmp_path / "wallets.sqlite3"
    assert customer_addresses(directory_path, "cus_alice") == [
        ("ethereum", ALICE),  # stored checksummed
        ("polygon", ALICE),
    ]
    assert customer_addresses(directory_path, "cus_bob") == [("polygon", BOB)]

    async def wallet_a1() -> tuple[str, str, str]:
        stores = await open_sqlite_stores(directory_path)
        try:
            wallet = await stores.wallets.get_wallet(DEFAULT_TENANT, "wal_a1")
        finally:
            await stores.aclose()
        return wallet.customer_id, wallet.network, wallet.address

    assert asyncio.run(wallet_a1()) == ("cus_alice", "polygon", ALICE)


def test_wallets_import_with_one_bad_row_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG)
    directory_path = tmp_path / "wallets.sqlite3"
    good = tmp_path / "good.csv"
    good.write_text(f"wallet_id,customer_id,network,address\nwal_b1,cus_bob,polygon,{BOB}\n")
    code, _, stderr = balances_main(
        "wallets", "import", str(good), "--config", str(config), cwd=tmp_path
    )
    assert code == 0, stderr

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "customer_id,network,address\n"
        f"cus_carol,polygon,{ALICE}\n"
        "cus_carol,ethereum,0x1234\n"  # row 2: malformed address
        f"cus_carol,ethereum,{ALICE}\n"
    )
    code, stdout, stderr = balances_main(
        "wallets", "import", str(bad), "--config", str(config), cwd=tmp_path
    )
    assert code == 1
    assert "Traceback" not in stderr
    # Log lines may precede it; the error itself is one line, the last.
    line = stderr.splitlines()[-1]
    assert line.startswith("balances: import rejected, nothing was written: row 2: "), line
    assert "address '0x1234' is malformed" in line
    assert "imported" not in stdout

    with pytest.raises(CustomerNotFound):
        customer_addresses(directory_path, "cus_carol")  # not even row 1
    assert customer_addresses(directory_path, "cus_bob") == [("polygon", BOB)]
