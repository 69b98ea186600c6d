"""Warm GetWalletBalance throughput: ``balances serve --workers N`` against one process.

    .venv/bin/python -m scripts.bench_workers [--workers 2] [--rounds 3] [--seconds 5]

The bench's world (scripts/bench: two anvil chains, a small directory) and its
server settings; h2load with several connections (``-c 8``): the kernel spreads
*connections* over the workers, so one connection would pin to one worker.
Each worker has its own in-memory cache, so every run starts with a warm-up run
that fills them.  One process and N workers alternate for ``--rounds`` rounds;
the medians are printed.  Not part of the suite: timings are measured, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from grpc import aio

from balances.v1 import balances_pb2
from scripts.bench.load import ensure_tools, grpc_frame, parse_h2load
from scripts.bench.processes import serve_logged
from scripts.bench.world import Sizes, build_chains, build_directories, server_settings
from service.settings.render import render_settings

_WALLET = "/balances.v1.BalancesService/GetWalletBalance"
_WORKERS = re.compile(r"\d+ workers serving gRPC on port (\d+)")
_PLAIN = re.compile(r"serving gRPC on port (\d+)")


async def _serving(argv: list[str], workers: int, workdir: Path, stack: AsyncExitStack) -> int:
    """Start ``argv``; its gRPC port once every worker serves."""
    log_path = workdir / f"serve-{workers}.log"
    process, text = await serve_logged(stack, argv, log_path, cwd=workdir)
    pattern = _WORKERS if workers > 1 else _PLAIN
    for _ in range(600):
        if found := pattern.search(text):
            return int(found.group(1))
        if process.returncode is not None:
            break
        await asyncio.sleep(0.1)
        text = await asyncio.to_thread(log_path.read_text, errors="replace")
    raise SystemExit(f"the server did not start; see {log_path}")


async def _h2load(h2load: str, port: int, request: Path, response: bytes, key: str,
                  seconds: float, connections: int, streams: int) -> float:  # fmt: skip
    argv = [
        h2load, "-D", f"{seconds:g}", "-c", str(connections), "-m", str(streams), "-t", "1",
        "-d", str(request),
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f"x-api-key: {key}",
        f"http://127.0.0.1:{port}{_WALLET}",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    took, ok, failed = parse_h2load(out.decode(errors="replace"), len(grpc_frame(response)))
    if failed:
        raise SystemExit(f"h2load: {failed} failed calls")
    return ok / took


async def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    h2load = ensure_tools(notes).get("h2load")
    if h2load is None:
        raise SystemExit("h2load is needed (Debian nghttp2-client)")
    sizes = Sizes(
        cold_wallets_per_network=2, big_wallets=10, watchers=10, directory_wallets=100,
        directory_samples=1,
    )  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="balances-workers-"))
    balances = str(Path(sys.executable).with_name("balances"))
    try:
        async with AsyncExitStack() as stack:
            print("building the world", flush=True)
            world = await build_chains(stack, sizes)
            main_db = workdir / "main.sqlite3"
            await build_directories(world, sizes, main_db, workdir / "counted.sqlite3")
            assert world.warm is not None
            warm = world.warm
            settings = replace(server_settings(world, main_db, rest=False))
            config = workdir / "serve.toml"
            config.write_text(render_settings(settings))
            request = workdir / "request.bin"
            message = balances_pb2.GetWalletBalanceRequest(wallet_id=warm.wallet_ids[0])
            request.write_bytes(grpc_frame(message.SerializeToString()))
            results: dict[int, list[float]] = {1: [], args.workers: []}
            for round_ in range(args.rounds):
                order = [1, args.workers] if round_ % 2 == 0 else [args.workers, 1]
                for workers in order:
                    async with AsyncExitStack() as served:
                        argv = [balances, "serve", "--config", str(config)]
                        if workers > 1:
                            argv += ["--workers", str(workers)]
                        port = await _serving(argv, workers, workdir, served)
                        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                            response = await channel.unary_unary(_WALLET, None, None)(
                                message.SerializeToString(),
                                metadata=(("x-api-key", warm.api_key),),
                                timeout=30,
                            )
                        load = (h2load, port, request, response, warm.api_key)
                        await _h2load(*load, 1.0, args.connections, args.streams)  # warm-up
                        qps = await _h2load(*load, args.seconds, args.connections, args.streams)
                        results[workers].append(qps)
                        print(
                            f"round {round_ + 1}: {workers} process(es): {qps:,.0f}/s", flush=True
                        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    one, many = (statistics.median(results[k]) for k in (1, args.workers))
    print(
        f"warm GetWalletBalance, h2load -c {args.connections} -m {args.streams}:"
        f" 1 process {one:,.0f}/s, --workers {args.workers} {many:,.0f}/s,"
        f" {many / one:.2f}x (medians of {args.rounds})"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="calls in flight per connection")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
