"""Noisy neighbour: does one tenant at full blast slow another tenant down?

Starts two local anvil chains with the demo world, a real ``balances serve``
process (its own process, so the load generators share no interpreter with
it), and two tenants:

* ``quiet`` (tenant B) reads its warm ``GetWalletBalance`` one call every
  ``--interval`` seconds (within its own rate limit) and records each call's latency;
* ``noisy`` (tenant A) runs ``--processes`` processes of ``--clients`` concurrent
  callers each, every one calling ``GetWalletBalance`` as fast as it can and
  ignoring refusals.

B's p50/p99 are measured unloaded, then with A hammering, for ``--rounds``
rounds; the ratio loaded p99 / unloaded p99 is printed per round.  The server
runs with the default ``[limits]`` unless ``--limits`` names a TOML file whose
``[limits]`` table replaces them.

    .venv/bin/python -m scripts.noisy_neighbour [--samples 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from balances.v1 import balances_pb2, balances_pb2_grpc, wallets_pb2, wallets_pb2_grpc
from scripts.bench.processes import serve_logged, serving_port
from service.auth.keys import new_api_key
from service.devchain.anvil import AnvilNode
from service.devchain.world import (
    ETHEREUM,
    POLYGON,
    DemoWorld,
    demo_settings,
    demo_wallets,
    deploy_network,
    fund_wallets,
    write_wallet_file,
)
from service.importfile import import_wallet_file
from service.settings import parse_settings
from service.settings.render import render_settings
from service.store.sqlite import open_sqlite_stores

QUIET, NOISY = "quiet", "noisy"
QUIET_WALLET = "wal_alice_polygon"
NOISY_ADDRESS = "0xd3e0000000000000000000000000000000000002"  # a demo address on polygon


@dataclass
class Figures:
    p50_ms: float
    p99_ms: float


def percentiles(samples: list[float]) -> Figures:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Figures(cuts[49] * 1000, cuts[98] * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="B's calls per phase")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between B's calls")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="A's load processes")
    parser.add_argument("--clients", type=int, default=16, help="A's callers per process")
    parser.add_argument("--limits", type=Path, help="a TOML file with a [limits] table to use")
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, to this file")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile = args.profile.absolute()  # the server runs in its own directory
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="noisy-neighbour-"))
    async with AsyncExitStack() as stack:
        world = DemoWorld()
        for plan in (POLYGON, ETHEREUM):
            node = await stack.enter_async_context(AnvilNode(chain_id=plan.chain_id))
            world.networks[plan.name] = await deploy_network(plan, node.url)
        await fund_wallets(world, demo_wallets())
        settings = demo_settings(
            world,
            listen="127.0.0.1:0",
            directory_path=workdir / "wallets.sqlite3",
            cache_ttl_seconds=3600,  # warm reads only: no expiry while measuring
        )
        if args.limits is not None:
            raw = tomllib.loads(args.limits.read_text())
            limits = parse_settings({**raw, "networks": _any_network()}, workdir).limits
            settings = replace(settings, limits=limits)
        config = workdir / "balances.toml"
        config.write_text(render_settings(settings))
        quiet_key, noisy_key = await _prepare_directory(world, workdir, settings.directory_path)

        port = await _start_server(stack, config, workdir, args.profile)
        target = f"127.0.0.1:{port}"
        noisy_wallet = await _import_noisy_wallet(target, noisy_key)
        limits = settings.limits
        print(
            f"limits: {limits.requests_per_second:g} req/s, burst {limits.burst},"
            f" {limits.max_in_flight} in flight, {limits.max_streams} streams per key;"
            f" A: {args.processes} processes x {args.clients} callers; B: {args.samples}"
            f" calls per phase, one every {args.interval:g}s; {os.cpu_count()} CPUs"
        )
        ratios = []
        async with aio.insecure_channel(target) as channel:
            quiet = balances_pb2_grpc.BalancesServiceStub(channel)
            await _measure(quiet, quiet_key, 100, args.interval)  # warm cache and channel
            for round_ in range(1, args.rounds + 1):
                unloaded = percentiles(
                    await _measure(quiet, quiet_key, args.samples, args.interval)
                )
                loaded_samples, load = await _under_load(
                    args, target, noisy_key, noisy_wallet, quiet, quiet_key
                )
                loaded = percentiles(loaded_samples)
                ratio = loaded.p99_ms / unloaded.p99_ms
                ratios.append(ratio)
                print(
                    f"round {round_}: B unloaded p50 {unloaded.p50_ms:.2f} ms"
                    f" p99 {unloaded.p99_ms:.2f} ms | loaded p50 {loaded.p50_ms:.2f} ms"
                    f" p99 {loaded.p99_ms:.2f} ms | p99 ratio {ratio:.2f}x |"
                    f" A answered {load['ok'] / load['seconds']:.0f}/s,"
                    f" refused {load['refused'] / load['seconds']:.0f}/s,"
                    f" other errors {load['other']}"
                )
        print(f"median p99 ratio over {len(ratios)} rounds: {statistics.median(ratios):.2f}x")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _any_network() -> list[dict[str, Any]]:
    """A placeholder network, so a file with only [limits] parses as settings."""
    token = {"symbol": "X", "decimals": 0, "native": True, "price": {"peg": "1"}}
    return [{"name": "x", "chain_id": 1, "rpc_urls": ["http://x"], "tokens": [token]}]


async def _prepare_directory(world: DemoWorld, workdir: Path, directory: Path) -> tuple[str, str]:
    """B's wallets (the demo's) and one key per tenant; the plaintext keys."""
    wallets = workdir / "wallets.json"
    write_wallet_file(wallets, demo_wallets())
    stores = await open_sqlite_stores(directory)
    try:
        await import_wallet_file(stores.wallets, wallets, QUIET, list(world.networks))
        keys = []
        for tenant in (QUIET, NOISY):
            key = new_api_key()
            await stores.api_keys.add_key(key.key_id, tenant, key.digest)
            keys.append(key.plaintext)
    finally:
        await stores.aclose()
    return keys[0], keys[1]


async def _start_server(
    stack: AsyncExitStack, config: Path, workdir: Path, profile: Path | None
) -> int:
    balances = str(Path(sys.executable).with_name("balances"))
    profiled = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
    argv = [*profiled, balances, "serve", "--config", str(config)]
    _process, log = await serve_logged(stack, argv, workdir / "server.log", cwd=workdir)
    return serving_port(log)


async def _import_noisy_wallet(target: str, key: str) -> str:
    async with aio.insecure_channel(target) as channel:
        wallets = wallets_pb2_grpc.WalletsServiceStub(channel)
        imported = await wallets.ImportWallet(
            wallets_pb2.ImportWalletRequest(
                customer_id="cus_noisy", network="polygon", address=NOISY_ADDRESS
            ),
            metadata=(("x-api-key", key),),
        )
    return str(imported.wallet.wallet_id)


async def _measure(stub: Any, key: str, samples: int, interval: float) -> list[float]:
    request = balances_pb2.GetWalletBalanceRequest(wallet_id=QUIET_WALLET)
    metadata = (("x-api-key", key),)
    latencies = []
    for _ in range(samples):
        await asyncio.sleep(interval)
        started = time.perf_counter()
        await stub.GetWalletBalance(request, metadata=metadata, timeout=10)
        latencies.append(time.perf_counter() - started)
    return latencies


async def _under_load(
    args: argparse.Namespace, target: str, key: str, wallet: str, quiet: Any, quiet_key: str
) -> tuple[list[float], dict[str, float]]:
    context = multiprocessing.get_context("spawn")  # grpc does not survive fork
    stop = context.Event()
    results: Any = context.Queue()
    workers = [
        context.Process(target=_hammer, args=(target, key, wallet, args.clients, stop, results))
        for _ in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    try:
        await asyncio.sleep(3)  # the workers start up and reach full speed
        samples = await _measure(quiet, quiet_key, args.samples, args.interval)
    finally:
        stop.set()
    totals = {"ok": 0.0, "refused": 0.0, "other": 0.0, "seconds": 0.0}
    for _ in workers:
        counts = await asyncio.to_thread(results.get, True, 30)
        for name in ("ok", "refused", "other", "seconds"):
            totals[name] += counts[name]
    for worker in workers:
        worker.join(10)
    totals["seconds"] /= len(workers)
    return samples, totals


def _hammer(target: str, key: str, wallet: str, clients: int, stop: Event, results: Any) -> None:
    """One load process: ``clients`` callers as fast as they can until ``stop``."""
    results.put(asyncio.run(_hammer_async(target, key, wallet, clients, stop)))


async def _hammer_async(
    target: str, key: str, wallet: str, clients: int, stop: Event
) -> dict[str, float]:
    counts = {"ok": 0.0, "refused": 0.0, "other": 0.0}
    request = balances_pb2.GetWalletBalanceRequest(wallet_id=wallet)
    metadata = (("x-api-key", key),)
    async with aio.insecure_channel(target) as channel:
        stub = balances_pb2_grpc.BalancesServiceStub(channel)

        async def caller() -> None:
            while not stop.is_set():
                try:
                    await stub.GetWalletBalance(request, metadata=metadata, timeout=10)
                    counts["ok"] += 1
                except aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        counts["refused"] += 1
                    else:
                        counts["other"] += 1

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(clients)))
        counts["seconds"] = time.monotonic() - started
    return counts


if __name__ == "__main__":
    sys.exit(main())
