"""Figures for the warm path and the customer lookup (issue 11), printed, never asserted.

``warm``: a warm ``GetWalletBalance`` loop driven by h2load against a real
``balances serve`` process of this tree, and, with ``--baseline DIR``, of
another tree at the same time (``git archive HEAD | tar -x -C DIR`` makes one),
measured in turns, A B A B ...: requests per second and the server's CPU time
per request (from /proc).  h2load counts HTTP 200 even for gRPC errors, so
each server is first checked with a real gRPC call, and h2load's responses
with their size.  The server's rate limits are lifted for the measurement.

    .venv/bin/python -m scripts.hot_path_figures warm [--baseline DIR] [--rounds 5]

``lookup``: one 10-wallet customer in a 100,000-wallet tenant: the lookup's
time (median of many) and SQLite VM steps, on the schema before this fix
(version 4, never analyzed) and now: the bare statement, through the store
(one round trip to the database thread) and through its cache (warm).

    .venv/bin/python -m scripts.hot_path_figures lookup [--wallets 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from balances.v1 import balances_pb2, balances_pb2_grpc
from scripts.bench.processes import serve_logged, serving_port
from service.devchain.anvil import AnvilNode
from service.devchain.world import (
    ETHEREUM,
    POLYGON,
    DemoWorld,
    demo_wallets,
    deploy_network,
    fund_wallets,
    write_wallet_file,
)
from service.store.sqlite import SqliteWalletStore, open_sqlite_stores
from service.store.sqlite.migrations import MIGRATIONS, migrate
from service.store.sqlite.wallets import CUSTOMER_WALLETS

HERE = Path(__file__).resolve().parent.parent
WALLET = "wal_alice_polygon"
METHOD = "/balances.v1.BalancesService/GetWalletBalance"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, dest="command")
    warm = commands.add_parser("warm", help="warm GetWalletBalance: req/s and CPU per request")
    warm.add_argument("--baseline", type=Path, help="another tree to measure in turns")
    warm.add_argument("--rounds", type=int, default=5)
    warm.add_argument("--seconds", type=int, default=8, help="h2load's duration per turn")
    warm.add_argument("--clients", type=int, default=4, help="h2load connections")
    warm.add_argument("--streams", type=int, default=8, help="concurrent calls per connection")
    lookup = commands.add_parser("lookup", help="a 10-wallet customer in a large tenant")
    lookup.add_argument("--wallets", type=int, default=100_000)
    lookup.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    if args.command == "warm":
        return asyncio.run(run_warm(args))
    return asyncio.run(run_lookup(args))


# ---------------------------------------------------------------- warm


@dataclass
class Server:
    name: str
    tree: Path
    pid: int
    port: int
    key: str
    response_bytes: int = 0


async def run_warm(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is needed (Debian: apt-get install nghttp2-client)")
    workdir = Path(tempfile.mkdtemp(prefix="hot-path-"))
    trees = {"this tree": HERE}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    async with AsyncExitStack() as stack:
        world = DemoWorld()
        for plan in (POLYGON, ETHEREUM):
            node = await stack.enter_async_context(AnvilNode(chain_id=plan.chain_id))
            world.networks[plan.name] = await deploy_network(plan, node.url)
        await fund_wallets(world, demo_wallets())
        servers = [
            await _start(stack, world, name, tree, workdir / f"server-{n}")
            for n, (name, tree) in enumerate(trees.items())
        ]
        body = balances_pb2.GetWalletBalanceRequest(wallet_id=WALLET).SerializeToString()
        request_file = workdir / "request.bin"
        request_file.write_bytes(b"\0" + struct.pack(">I", len(body)) + body)
        for server in servers:
            server.response_bytes = await _check(server)
        sizes = {s.name: s.response_bytes for s in servers}
        print(
            f"{os.cpu_count()} CPUs; h2load -c {args.clients} -m {args.streams}"
            f" -D {args.seconds}; warm {WALLET}; response {sizes} bytes"
        )
        figures: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        for round_ in range(1, args.rounds + 1):
            for server in servers if round_ % 2 else reversed(servers):
                rate, cpu = await _turn(server, request_file, args)
                figures[server.name].append((rate, cpu))
                print(f"round {round_} {server.name:>10}: {rate:8.0f} req/s, {cpu:6.0f} µs CPU/req")
        print()
        for name, runs in figures.items():
            rates = [r for r, _ in runs]
            cpus = [c for _, c in runs]
            print(
                f"{name:>10}: median {statistics.median(rates):.0f} req/s"
                f" (min {min(rates):.0f}, max {max(rates):.0f});"
                f" median {statistics.median(cpus):.0f} µs server CPU per request"
            )
        if len(servers) == 2:
            base, this = (statistics.median(r for r, _ in figures[s.name]) for s in servers)
            print(f"this tree / baseline: {this / base:.2f}x requests per second")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'generated'}"}


async def _balances(tree: Path, *args: str, cwd: Path) -> str:
    """``balances ARGS`` run from ``tree``'s code; its stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from service.cli import main; sys.exit(main())",
        *args,
        cwd=cwd,
        env=_environment(tree),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"balances {args[0]} {args[1]} failed in {tree}: {err.decode()}")
    return out.decode()


# Run with a tree's own code: each tree writes the settings it understands.
_RENDER = """
import pickle, sys
from dataclasses import replace
from service.devchain.world import demo_settings
from service.settings.model import LimitsSettings
from service.settings.render import render_settings
world, directory, config = pickle.load(sys.stdin.buffer)
settings = demo_settings(
    world, listen="127.0.0.1:0", directory_path=directory, cache_ttl_seconds=3600
)
unlimited = LimitsSettings(requests_per_second=1e6, burst=1_000_000, max_in_flight=100_000)
config.write_text(render_settings(replace(settings, limits=unlimited)))
"""


async def _render_config(tree: Path, world: DemoWorld, directory: Path, config: Path) -> None:
    """The demo settings (warm reads only: a long TTL; no rate limits), as ``tree`` writes them."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RENDER,
        cwd=directory.parent,  # not this tree: "-c" puts the working directory on the path
        env=_environment(tree),
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate(pickle.dumps((world, directory, config)))
    if process.returncode != 0:
        raise SystemExit(f"writing the settings failed in {tree}: {err.decode()}")


async def _start(
    stack: AsyncExitStack, world: DemoWorld, name: str, tree: Path, workdir: Path
) -> Server:
    """A server of ``tree`` with its own directory (made by its own CLI) and key."""
    await asyncio.to_thread(workdir.mkdir, parents=True)
    config = workdir / "balances.toml"
    await _render_config(tree, world, workdir / "wallets.sqlite3", config)
    wallets = workdir / "wallets.json"
    write_wallet_file(wallets, demo_wallets())
    await _balances(tree, "wallets", "import", str(wallets), "--config", str(config), cwd=workdir)
    created = await _balances(
        tree, "keys", "create", "--tenant", "default", "--config", str(config), cwd=workdir
    )
    key = created.strip()
    argv = (
        sys.executable,
        "-c",
        "import sys; from service.cli import main; sys.exit(main())",
        "serve",
        "--config",
        str(config),
    )
    process, log = await serve_logged(
        stack, argv, workdir / "server.log", cwd=workdir, env=_environment(tree)
    )
    return Server(name, tree, process.pid, serving_port(log), key)


async def _check(server: Server) -> int:
    """A real gRPC call answers (and warms the cache); the response's size in bytes."""
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = balances_pb2_grpc.BalancesServiceStub(channel)
        response = await stub.GetWalletBalance(
            balances_pb2.GetWalletBalanceRequest(wallet_id=WALLET),
            metadata=(("x-api-key", server.key),),
            timeout=30,
        )
    return response.ByteSize()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


async def _turn(
    server: Server, request_file: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """One h2load run: (requests per second, server CPU µs per request)."""
    before = _cpu_seconds(server.pid)
    process = await asyncio.create_subprocess_exec(
        "h2load",
        *("-c", str(args.clients), "-m", str(args.streams), "-D", str(args.seconds)),
        *("-d", str(request_file)),
        *("-H", "content-type: application/grpc", "-H", "te: trailers"),
        *("-H", f"x-api-key: {server.key}"),
        f"http://127.0.0.1:{server.port}{METHOD}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    text = out.decode()
    cpu = _cpu_seconds(server.pid) - before
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", text)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text)
    data = re.search(r"\((\d+)\) data", text)
    if done is None or rate is None or data is None or done.group(1) != done.group(2):
        raise SystemExit(f"h2load against {server.name} failed:\n{text}")
    answered = int(done.group(2))
    # A gRPC error is HTTP 200 too, but carries no message: every answer must hold one.
    if int(data.group(1)) != answered * (5 + server.response_bytes):
        raise SystemExit(f"h2load against {server.name}: not every answer was a balance:\n{text}")
    return float(rate.group(1)), cpu / answered * 1e6


# ---------------------------------------------------------------- lookup


TENANT, CUSTOMER = "acme", "cus_ten"
STAMP = "2024-01-15T10:30:00.000000Z"


def _rows(count: int) -> Iterator[tuple[str, ...]]:
    """``count`` wallets of one tenant on two networks: 10 of CUSTOMER, the others 5 each."""
    for n in range(count):
        customer = CUSTOMER if n < 10 else f"cus_{n // 5:07d}"
        yield (
            f"wal_{n:08d}",
            TENANT,
            customer,
            ("ethereum", "polygon")[n % 2],
            f"0x{n:040x}",
            STAMP,
        )


def _fill(connection: sqlite3.Connection, count: int) -> None:
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO wallets VALUES (?, ?, ?, ?, ?, ?)", _rows(count))
    connection.execute("COMMIT")


def _steps(connection: sqlite3.Connection) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    connection.set_progress_handler(count, 1)
    connection.execute(CUSTOMER_WALLETS, (TENANT, CUSTOMER)).fetchall()
    connection.set_progress_handler(None, 1)
    return steps


def _median_ms(run: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def _median_ms_async(run: Callable[[], Awaitable[object]], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def run_lookup(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="customer-lookup-"))
    print(f"a {CUSTOMER!r} of 10 wallets in a tenant of {args.wallets:,} wallets, 2 networks")
    with closing(sqlite3.connect(workdir / "v4.sqlite3", isolation_level=None)) as old:
        migrate(old, MIGRATIONS[:4])
        _fill(old, args.wallets)
        plan = old.execute("EXPLAIN QUERY PLAN " + CUSTOMER_WALLETS, (TENANT, CUSTOMER)).fetchall()
        before = _median_ms(
            lambda: old.execute(CUSTOMER_WALLETS, (TENANT, CUSTOMER)).fetchall(),
            max(20, args.repeat // 50),
        )
        print(
            f"schema 4, not analyzed: {before:8.3f} ms, {_steps(old):,} VM steps;"
            f" plan {[row[3] for row in plan]}"
        )
    async with await open_sqlite_stores(workdir / "now.sqlite3") as stores:
        await stores.database.run(_fill, args.wallets)

        def bare(connection: sqlite3.Connection) -> tuple[float, int, list[str]]:
            plan = connection.execute(
                "EXPLAIN QUERY PLAN " + CUSTOMER_WALLETS, (TENANT, CUSTOMER)
            ).fetchall()
            took = _median_ms(
                lambda: connection.execute(CUSTOMER_WALLETS, (TENANT, CUSTOMER)).fetchall(),
                args.repeat,
            )
            return took, _steps(connection), [row[3] for row in plan]

        took, steps, plan_now = await stores.database.run(bare)
        print(
            f"schema {len(MIGRATIONS)}, statement: {took:8.3f} ms,"
            f" {steps:,} VM steps; plan {plan_now}"
        )
        store = SqliteWalletStore(stores.database)  # what the cache has in front of it
        through_store = await _median_ms_async(
            lambda: store.customer_wallets(TENANT, CUSTOMER), args.repeat
        )
        print(
            f"schema {len(MIGRATIONS)}, SqliteWalletStore (a round trip): {through_store:8.3f} ms"
        )
        await stores.wallets.customer_wallets(TENANT, CUSTOMER)
        cached = await _median_ms_async(
            lambda: stores.wallets.customer_wallets(TENANT, CUSTOMER), args.repeat
        )
        print(f"schema {len(MIGRATIONS)}, cached directory (warm):        {cached:8.3f} ms")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
