"""The ``balances`` command as a user runs it: real subprocesses of the console script."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from service.devchain.world import DemoWorld, demo_settings
from service.domain import DEFAULT_TENANT
from service.errors import CustomerNotFound
from service.settings.render import render_settings
from service.store.sqlite import open_sqlite_stores
from tests.support.processes import run_tool
from tests.support.rpc_proxy import CountingProxy

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

BALANCES = Path(sys.executable).parent / "balances"
SECRET = "SECRET-PROVIDER-KEY"
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
ALICE = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
BOB = "0x9876543210987654321098765432109876543210"

# A valid config whose RPC URLs point nowhere: importing wallets never touches a chain.
OFFLINE_CONFIG = f"""
[directory]
path = "wallets.sqlite3"

[[networks]]
name = "polygon"
chain_id = 137
rpc_urls = ["http://127.0.0.1:9/v3/{SECRET}"]

[[networks.tokens]]
symbol = "USDC"
address = "{USDC}"
decimals = 6
price = {{ peg = "1" }}

[[networks]]
name = "ethereum"
chain_id = 1
rpc_urls = ["http://127.0.0.1:9/v3/{SECRET}"]

[[networks.tokens]]
symbol = "ETH"
native = true
decimals = 18
price = {{ peg = "3000" }}
"""


async def run_balances(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    """Run ``balances ARGS`` to completion: (exit code, stdout, stderr)."""
    environment = {k: v for k, v in os.environ.items() if k != "BALANCES_CONFIG"}
    return await run_tool(
        str(BALANCES), *args, timeout=timeout, cwd=cwd, env=environment | (env or {})
    )


def assert_one_line_error(code: int, stderr: str, *words: str) -> str:
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    for word in words:
        assert word in line, (word, line)
    assert SECRET not in line
    return line


async def test_bad_config_exits_non_zero_with_one_line_naming_key_and_reason(
    tmp_path: Path,
) -> None:
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
    results = await asyncio.gather(
        *(run_balances("serve", "--config", str(path), cwd=tmp_path) for path in cases)
    )
    for (key, reason), (code, stdout, stderr) in zip(cases.values(), results, strict=True):
        line = assert_one_line_error(code, stderr, key, reason)
        assert line.startswith("balances: configuration error: ")
        assert code == 2
        assert stdout == ""


async def test_config_path_comes_from_the_environment_without_option(tmp_path: Path) -> None:
    from_env = tmp_path / "from_env.toml"
    from_env.write_text(OFFLINE_CONFIG.replace("decimals = 6", "decimals = 600"))
    code, _, stderr = await run_balances(
        "serve", cwd=tmp_path, env={"BALANCES_CONFIG": str(from_env)}
    )
    assert_one_line_error(code, stderr, "networks[0].tokens[0].decimals", "between 0 and 255")

    # --config wins over the environment.
    (tmp_path / "other.toml").write_text("[[networks]]\n")
    code, _, stderr = await run_balances(
        "serve", "--config", "other.toml", cwd=tmp_path, env={"BALANCES_CONFIG": str(from_env)}
    )
    assert_one_line_error(code, stderr, "networks[0].name", "is required")


async def test_serve_refuses_a_node_on_another_chain_naming_the_network(
    world: DemoWorld, tmp_path: Path
) -> None:
    async with (
        CountingProxy(world.networks["polygon"].rpc_url) as proxy,
        CountingProxy(world.networks["ethereum"].rpc_url) as slow,
    ):
        # ethereum (correct) is still being checked when polygon (wrong) fails: its
        # check must be cancelled quietly, not reported as a failure of ethereum.
        slow.delay = 2.0
        text = render_settings(
            demo_settings(
                world,
                listen="127.0.0.1:0",
                directory_path=tmp_path / "wallets.sqlite3",
                rpc_urls={"polygon": [proxy.url], "ethereum": [slow.url]},
            )
        )
        polygon_id = f"chain_id = {world.networks['polygon'].chain_id}"
        assert text.count(polygon_id) == 1
        config = tmp_path / "wrong_chain.toml"
        config.write_text(text.replace(polygon_id, "chain_id = 137"))

        code, stdout, stderr = await run_balances("serve", "--config", str(config), cwd=tmp_path)

        assert proxy.counts["eth_chainId"] >= 1  # it really asked the node
    line = assert_one_line_error(code, stderr, "polygon", "chain id 31337", "137")
    assert proxy.url not in line
    assert "127.0.0.1" not in line
    assert "serving" not in stdout + stderr
    assert "ethereum" not in line


async def _customer_addresses(directory_path: Path, customer_id: str) -> list[tuple[str, str]]:
    stores = await open_sqlite_stores(directory_path)
    try:
        wallets = await stores.wallets.customer_wallets(DEFAULT_TENANT, customer_id)
    finally:
        await stores.aclose()
    return sorted((w.network, w.address) for w in wallets)


async def test_wallets_import_json_and_csv(tmp_path: Path) -> None:
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

    code, stdout, stderr = await run_balances(
        "wallets", "import", str(wallets_json), "--config", str(config), cwd=tmp_path
    )
    assert code == 0, stderr
    assert "imported 2 wallets" in stdout
    code, stdout, stderr = await run_balances(
        "wallets", "import", "wallets.csv", "--config", str(config), cwd=tmp_path
    )
    assert code == 0, stderr
    assert "imported 1 wallets" in stdout

    directory_path = tmp_path / "wallets.sqlite3"
    assert await _customer_addresses(directory_path, "cus_alice") == [
        ("ethereum", ALICE),  # stored checksummed
        ("polygon", ALICE),
    ]
    assert await _customer_addresses(directory_path, "cus_bob") == [("polygon", BOB)]
    stores = await open_sqlite_stores(directory_path)
    try:
        wallet = await stores.wallets.get_wallet(DEFAULT_TENANT, "wal_a1")
    finally:
        await stores.aclose()
    assert (wallet.customer_id, wallet.network, wallet.address) == ("cus_alice", "polygon", ALICE)


async def test_wallets_import_with_one_bad_row_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG)
    directory_path = tmp_path / "wallets.sqlite3"
    good = tmp_path / "good.csv"
    good.write_text(f"wallet_id,customer_id,network,address\nwal_b1,cus_bob,polygon,{BOB}\n")
    code, _, stderr = await run_balances(
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
    code, stdout, stderr = await run_balances(
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
        await _customer_addresses(directory_path, "cus_carol")  # not even row 1
    assert await _customer_addresses(directory_path, "cus_bob") == [("polygon", BOB)]
