"""``balances demo``: two local chains, demo contracts and wallets, and the server.

Writes what it started to a JSON state file so scripts and tests can drive it,
prints grpcurl commands that work as printed, and on Ctrl-C/SIGTERM stops the
server and both chains, leaving no process behind: at any moment, since every
start is on one exit stack and ``balances demo`` turns a signal during start-up
into a cancellation (service/stop_signals.py), and even on SIGKILL, since anvil
dies with its parent (service/children.py).  The webhook receiver runs in this
process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.auth.keys import new_api_key
from service.devchain.anvil import AnvilNode
from service.devchain.deploy import transfer
from service.devchain.receiver import DemoReceiver
from service.devchain.world import (
    ETHEREUM,
    POLYGON,
    STABLE_DECIMALS,
    DemoWallet,
    DemoWorld,
    demo_settings,
    demo_wallets,
    deploy_network,
    fund_wallets,
    write_wallet_file,
)
from service.errors import InvalidArgument
from service.importfile import import_wallet_file
from service.logs import setup_logging
from service.run import ServingPorts, serve
from service.settings import Settings, WatchSettings, WebhookSettings
from service.settings.render import render_settings
from service.store.sqlite import open_sqlite_stores
from service.webhooks.destinations import WebhookDestinations
from service.webhooks.http_sender import SystemResolver
from service.webhooks.manage import WebhookManagement

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


async def run_demo(
    *,
    state_path: Path,
    workdir: Path,
    port: int,
    rest_port: int,
    stop: asyncio.Event | None = None,
    on_serving: Callable[[], None] | None = None,
) -> int:
    """Start chains, world and server; serve until ``stop``.  ``on_serving`` runs once the
    server serves, before the instructions are printed (``balances demo``: from then a
    signal is a graceful stop)."""
    setup_logging()
    _fresh_workdir(workdir)
    async with AsyncExitStack() as stack:
        world = DemoWorld()
        for plan in (POLYGON, ETHEREUM):
            node = await stack.enter_async_context(AnvilNode(chain_id=plan.chain_id))
            world.networks[plan.name] = await deploy_network(plan, node.url)
            log.info("chain %s (id %d) at %s", plan.name, plan.chain_id, node.url)
        await fund_wallets(world, demo_wallets())
        receiver = DemoReceiver()  # first: its port goes into the config
        await receiver.start()
        stack.push_async_callback(receiver.aclose)

        settings = replace(
            demo_settings(
                world,
                listen=f"127.0.0.1:{port}",
                rest_listen=f"127.0.0.1:{rest_port}",
                directory_path=(workdir / "balances.sqlite3").absolute(),
            ),
            # Follow blocks every second; the demo's receiver is a development receiver.
            watch=WatchSettings(poll_interval_seconds=1),
            webhooks=WebhookSettings(allow_http_hosts=(urlsplit(receiver.url).netloc,)),
        )
        # For the user: `balances wallets ... --config` against the running demo.
        config_path = workdir / "balances.toml"
        config_path.write_text(
            render_settings(
                settings,
                comment="Written by the Balances demo; see config/example.toml for real chains.",
            )
        )
        tenants = await _register_tenants(world, workdir, settings, receiver)

        def ready(ports: ServingPorts) -> None:
            if on_serving is not None:
                on_serving()  # first: whoever reads the instructions may signal at once
            target = f"127.0.0.1:{ports.grpc}"
            rest = f"http://127.0.0.1:{ports.rest}"
            state = _state(world, tenants, target, rest, config_path)
            state["webhook_receiver"] = receiver.url
            state_path.write_text(json.dumps(state, indent=2))
            print(_instructions(tenants, target, rest, state_path), flush=True)

        await serve(settings, on_ready=ready, stop=stop)
    print("demo stopped: server and chains are down", flush=True)
    return 0


@dataclass(frozen=True)
class DemoTenant:
    name: str
    api_key: str
    wallets: list[DemoWallet]


async def _register_tenants(
    world: DemoWorld, workdir: Path, settings: Settings, receiver: DemoReceiver
) -> list[DemoTenant]:
    """Two tenants: acme owns alice and bob; globex owns carol, whose wallet has the
    same polygon address as alice's (tenants register addresses independently).
    acme's balance.updated webhooks go to the demo's receiver."""
    alice_polygon = world.wallets[0]
    carol = DemoWallet(
        "wal_carol_polygon", "cus_carol", "polygon", alice_polygon.address, alice_polygon.raw
    )
    plan = {"acme": list(world.wallets), "globex": [carol]}
    stores = await open_sqlite_stores(settings.directory_path)
    tenants = []
    try:
        for tenant, wallets in plan.items():
            wallets_path = workdir / f"wallets-{tenant}.json"
            write_wallet_file(wallets_path, wallets)
            await import_wallet_file(
                stores.wallets, wallets_path, tenant, [n.name for n in settings.networks]
            )
            key = new_api_key()
            await stores.api_keys.add_key(key.key_id, tenant, key.digest)
            tenants.append(DemoTenant(tenant, key.plaintext, wallets))
        policy = settings.webhooks.policy
        webhooks = WebhookManagement(stores.webhooks, WebhookDestinations(policy, SystemResolver()))
        change = await webhooks.update_config("acme", receiver.url, [], rotate_secret=False)
        receiver.secret = change.config.secret
    finally:
        await stores.aclose()
    return tenants


def _fresh_workdir(workdir: Path) -> None:
    """Each demo starts with a new chain, so an old wallet database would be wrong."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("balances.sqlite3*"):
        stale.unlink()


def _state(
    world: DemoWorld, tenants: list[DemoTenant], target: str, rest: str, config_path: Path
) -> dict[str, Any]:
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
        "tenants": {
            tenant.name: {
                "api_key": tenant.api_key,
                "customers": {
                    customer: [
                        {"wallet_id": w.wallet_id, "network": w.network, "address": w.address}
                        for w in tenant.wallets
                        if w.customer_id == customer
                    ]
                    for customer in sorted({w.customer_id for w in tenant.wallets})
                },
            }
            for tenant in tenants
        },
    }


def _instructions(tenants: list[DemoTenant], target: str, rest: str, state_path: Path) -> str:
    acme, globex = tenants[0], tenants[1]
    wallet = acme.wallets[0]
    grpcurl = f".venv/bin/grpcurl -plaintext -H 'x-api-key: {acme.api_key}'"
    curl = f"curl -s -H 'X-API-Key: {acme.api_key}'"
    return "\n".join(
        [
            "",
            f"Balances demo is serving gRPC on {target} and REST on {rest}.",
            f"API keys (shown once; also in {state_path}):",
            *(f"  {t.name:<7} {t.api_key}" for t in tenants),
            "",
            "gRPC (grpcurl is in .venv/bin; reflection is on, no proto files needed):",
            "",
            f"  .venv/bin/grpcurl -plaintext {target} list",
            f'  {grpcurl} -d \'{{"wallet_id": "{wallet.wallet_id}"}}\' '
            f"{target} balances.v1.BalancesService/GetWalletBalance",
            f'  {grpcurl} -d \'{{"customer_id": "{wallet.customer_id}"}}\' '
            f"{target} balances.v1.BalancesService/GetCustomerBalances",
            f'  {grpcurl} -d \'{{"customer_id": "{wallet.customer_id}"}}\' '
            f"{target} balances.v1.WalletsService/ListWallets",
            "",
            "Watch a wallet (leave it running), then move funds from another terminal:",
            "",
            f'  {grpcurl} -d \'{{"wallet_id": "{wallet.wallet_id}"}}\' '
            f"{target} balances.v1.BalancesService/WatchWalletBalance",
            f"  .venv/bin/balances demo-transfer --state {state_path} "
            f"--from {wallet.wallet_id} --to wal_bob_polygon --token USDC --amount 10.25",
            "",
            "The stream prints the new balance; acme's signed balance.updated webhooks",
            "arrive at the demo's receiver, which prints them here.",
            "",
            "REST:",
            "",
            f"  {curl} {rest}/v1/wallets/{wallet.wallet_id}/balance",
            f"  {curl} {rest}/v1/customers/{wallet.customer_id}/balances",
            f"  {curl} {rest}/v1/customers/{wallet.customer_id}/wallets",
            f"  {curl} -X POST {rest}/v1/customers/cus_dave/wallets/import \\",
            f'      -d \'{{"network": "ethereum", "address": "{wallet.address}"}}\'',
            f"  curl -s {rest}/openapi.json",
            "",
            f"globex's key sees only its own customer ({globex.wallets[0].customer_id});",
            "acme's customers are NOT_FOUND for it:",
            "",
            f"  curl -s -H 'X-API-Key: {globex.api_key}' "
            f"{rest}/v1/customers/{wallet.customer_id}/balances",
            "",
            "Ctrl-C stops the server and both chains.",
            "",
        ]
    )


async def demo_transfer(
    *, state_path: Path, from_wallet: str, to_wallet: str, token: str, amount: str
) -> str:
    """Move ``amount`` of an ERC-20 between two demo wallets on their (common) network."""
    state = json.loads(await asyncio.to_thread(state_path.read_text))
    wallets = {
        w["wallet_id"]: w
        for tenant in state["tenants"].values()
        for customer_wallets in tenant["customers"].values()
        for w in customer_wallets
    }
    for wallet_id in (from_wallet, to_wallet):
        if wallet_id not in wallets:
            raise InvalidArgument(f"{wallet_id} is not a demo wallet ({', '.join(wallets)})")
    sender, receiver = wallets[from_wallet], wallets[to_wallet]
    if sender["network"] != receiver["network"]:
        raise InvalidArgument("both wallets must be on the same network")
    network = state["networks"][sender["network"]]
    if token not in network["tokens"]:
        raise InvalidArgument(f"token must be one of {', '.join(network['tokens'])}")
    try:
        raw = Fraction(amount) * 10**STABLE_DECIMALS
    except (ValueError, ZeroDivisionError):
        raise InvalidArgument(f"amount {amount!r} is not a decimal number") from None
    if raw.denominator != 1 or raw <= 0:
        raise InvalidArgument(f"amount {amount!r} is not a positive amount with 6 decimals")
    await transfer(
        network["rpc_url"],
        network["tokens"][token],
        sender["address"],
        receiver["address"],
        int(raw),
    )
    return f"sent {amount} {token} from {from_wallet} to {to_wallet} on {sender['network']}"
