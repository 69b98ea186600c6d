"""``balances demo``: two local chains, demo contracts and wallets, and the server.

Writes what it started to a JSON state file so scripts and tests can drive it,
prints grpcurl commands that work as printed, and on Ctrl-C/SIGTERM stops the
server and both chains, leaving no process behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from service.config import load_settings
from service.devchain.anvil import AnvilNode
from service.devchain.world import (
    ETHEREUM,
    POLYGON,
    DemoWorld,
    demo_wallets,
    deploy_network,
    fund_wallets,
    render_config,
    write_wallet_file,
)
from service.directory.importfile import import_wallet_file
from service.directory.sqlite import SqliteWalletDirectory
from service.domain import DEFAULT_TENANT
from service.logs import setup_logging
from service.server import ServingPorts, serve

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


async def run_demo(*, state_path: Path, workdir: Path, port: int, rest_port: int) -> int:
    setup_logging()
    _fresh_workdir(workdir)
    async with AsyncExitStack() as stack:
        world = DemoWorld()
        for plan in (POLYGON, ETHEREUM):
            node = await stack.enter_async_context(AnvilNode(chain_id=plan.chain_id))
            world.networks[plan.name] = await deploy_network(plan, node.url)
            log.info("chain %s (id %d) at %s", plan.name, plan.chain_id, node.url)
        await fund_wallets(world, demo_wallets())

        config_path = workdir / "balances.toml"
        config_path.write_text(
            render_config(
                world,
                listen=f"127.0.0.1:{port}",
                rest_listen=f"127.0.0.1:{rest_port}",
                directory_path="balances.sqlite3",
            )
        )
        wallets_path = workdir / "wallets.json"
        write_wallet_file(wallets_path, world.wallets)
        settings = load_settings(config_path)
        directory = await SqliteWalletDirectory.open(settings.directory_path)
        try:
            await import_wallet_file(
                directory, wallets_path, DEFAULT_TENANT, [n.name for n in settings.networks]
            )
        finally:
            await directory.close()

        def ready(ports: ServingPorts) -> None:
            target = f"127.0.0.1:{ports.grpc}"
            rest = f"http://127.0.0.1:{ports.rest}"
            state = _state(world, target, rest, config_path)
            state_path.write_text(json.dumps(state, indent=2))
            print(_instructions(world, target, rest, state_path), flush=True)

        await serve(settings, on_ready=ready)
    print("demo stopped: server and chains are down", flush=True)
    return 0


def _fresh_workdir(workdir: Path) -> None:
    """Each demo starts with a new chain, so an old wallet database would be wrong."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("balances.sqlite3*"):
        stale.unlink()


def _state(world: DemoWorld, target: str, rest: str, config_path: Path) -> dict[str, Any]:
    return {
        "grpc": target,
        "rest": rest,
        "config": str(config_path.resolve()),
        "networks": {
            n.name: {
                "chain_id": n.chain_id,
                "rpc_url": n.rpc_url,
                "multicall3": n.multicall3,
                "tokens": n.tokens,
                "native_symbol": n.native_symbol,
                "price_feed": n.feed,
            }
            for n in world.networks.values()
        },
        "customers": {
            customer: [
                {"wallet_id": w.wallet_id, "network": w.network, "address": w.address}
                for w in world.wallets
                if w.customer_id == customer
            ]
            for customer in sorted({w.customer_id for w in world.wallets})
        },
    }


def _instructions(world: DemoWorld, target: str, rest: str, state_path: Path) -> str:
    wallet = world.wallets[0]
    return "\n".join(
        [
            "",
            f"Balances demo is serving gRPC on {target} (state in {state_path}).",
            "Try (grpcurl is in .venv/bin; reflection is on, no proto files needed):",
            "",
            f"  .venv/bin/grpcurl -plaintext {target} list",
            f'  .venv/bin/grpcurl -plaintext -d \'{{"wallet_id": "{wallet.wallet_id}"}}\' '
            f"{target} balances.v1.BalancesService/GetWalletBalance",
            f'  .venv/bin/grpcurl -plaintext -d \'{{"customer_id": "{wallet.customer_id}"}}\' '
            f"{target} balances.v1.BalancesService/GetCustomerBalances",
            f"  .venv/bin/grpcurl -plaintext {target} grpc.health.v1.Health/Check",
            "",
            f"REST (grpc-gateway style) on {rest}:",
            "",
            f"  curl -s {rest}/v1/wallets/{wallet.wallet_id}/balance",
            f"  curl -s {rest}/v1/customers/{wallet.customer_id}/balances",
            f"  curl -s {rest}/openapi.json",
            "",
            "Ctrl-C stops the server and both chains.",
            "",
        ]
    )


if __name__ == "__main__":
    asyncio.run(
        run_demo(state_path=Path("demo.json"), workdir=Path(".demo"), port=50051, rest_port=8080)
    )
