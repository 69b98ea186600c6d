"""``balances`` as the console script: it runs, fails in one line, and ``serve`` checks its nodes.

Every other command is tested in-process, through ``cli.main`` (tests/unit/test_cli.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.devchain.world import DemoWorld, demo_settings
from service.settings.render import render_settings
from tests.support.cli import OFFLINE_CONFIG, assert_one_line_error, run_balances
from tests.support.rpc_proxy import CountingProxy

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_console_script_runs_and_a_failure_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG.replace("chain_id = 137", 'chain_id = "137"'))
    code, stdout, stderr = await run_balances("serve", "--config", str(config), cwd=tmp_path)
    line = assert_one_line_error(code, stderr, "networks[0].chain_id", "must be of type integer")
    assert line.startswith("balances: configuration error: ")
    assert code == 2
    assert stdout == ""


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
