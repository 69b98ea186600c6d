"""``make bench`` / ``python -m scripts.bench``: build the world, measure, write BENCHMARKS.md.

    .venv/bin/python -m scripts.bench [--repeats 5] [--seconds 3] [--output BENCHMARKS.md]
    .venv/bin/python -m scripts.bench --quick     # a small world and short runs: a smoke run

The bench installs what it needs: h2load and wrk from Debian (as root) when
missing, and py-spy and web3 into a tools venv of its own (``.build/bench-tools``),
never into the project's.  What cannot be installed is replaced (a Python load
client) or skipped, and BENCHMARKS.md says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from scripts.bench.load import ensure_tools
from scripts.bench.report import machine, missed_targets, rows, write_markdown
from scripts.bench.scenarios import counted_phase, timed_phase
from scripts.bench.world import BenchWorld, Sizes, build_chains, build_directories
from service.devchain.anvil import find_anvil

_X = "\N{MULTIPLICATION SIGN}"
_ROOT = Path(__file__).resolve().parents[2]
_TOOLS_VENV = _ROOT / ".build" / "bench-tools"


def _tools_venv(notes: list[str]) -> dict[str, str | None]:
    """py-spy and web3 in a venv of the bench's own (web3 is no project dependency)."""
    python = _TOOLS_VENV / "bin" / "python"
    found: dict[str, str | None] = {"py-spy": None, "web3-python": None}
    if not python.exists():
        print("bench: creating the tools venv .build/bench-tools (py-spy, web3)", flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(_TOOLS_VENV)], capture_output=True)
        if made.returncode:
            notes.append("could not create a venv for py-spy and web3: no profiles, no web3")
            return found
    for package, check in (("py-spy", None), ("web3", "import web3")):
        ready = (
            (_TOOLS_VENV / "bin" / "py-spy").exists()
            if check is None
            else subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0
        )
        if not ready:
            print(f"bench: pip install {package} into .build/bench-tools", flush=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", package],
                capture_output=True,
                timeout=600,
            )
    if (_TOOLS_VENV / "bin" / "py-spy").exists():
        found["py-spy"] = str(_TOOLS_VENV / "bin" / "py-spy")
    else:
        notes.append("py-spy could not be installed: missed targets have no profile")
    if subprocess.run([str(python), "-c", "import web3"], capture_output=True).returncode == 0:
        found["web3-python"] = str(python)
    else:
        notes.append("web3 could not be installed in the bench's own venv: naive web3 skipped")
    return found


async def _naive_web3(
    python: str | None, world: BenchWorld, workdir: Path, rounds: int
) -> str | None:
    """Per-token web3 reads of the cold customer's wallets, for context."""
    if python is None:
        return None
    plan = {
        "networks": {
            name: {
                "rpc_url": world.demo.networks[name].rpc_url,
                "tokens": world.demo.networks[name].tokens,
                "wallets": addresses,
            }
            for name, addresses in world.cold_addresses.items()
        }
    }
    plan_path = workdir / "naive-web3.json"
    await asyncio.to_thread(plan_path.write_text, json.dumps(plan))
    process = await asyncio.create_subprocess_exec(
        python, str(Path(__file__).with_name("naive_web3.py")), str(plan_path), str(rounds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode:
        return f"naive web3 failed: {err.decode(errors='replace').strip().splitlines()[-1:]}"
    answer = json.loads(out)
    seconds = answer["seconds"]
    wallets = sum(len(a) for a in world.cold_addresses.values())
    calls = wallets * 3
    return (
        f"web3 {answer['web3']}, `contract.functions.balanceOf(w).call()` per ERC-20 and"
        f" `eth.get_balance(w)` per wallet, one after the other: the cold customer's"
        f" {wallets} wallets {_X} 3 tokens on 2 networks ({calls} `eth_call`s, no price feeds,"
        f" no block pinning) took {statistics.median(seconds) * 1000:,.0f} ms"
        f" (median of {len(seconds)}, {min(seconds) * 1000:,.0f}-{max(seconds) * 1000:,.0f})."
        " Run once after the rounds, not interleaved."
    )


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sizes = Sizes(repeats=args.repeats, load_seconds=args.seconds)
    if args.quick:
        sizes = replace(
            sizes,
            repeats=2,
            cold_samples=1,
            big_samples=1,
            big_wallets=600,
            watchers=100,
            directory_wallets=2_000,
            directory_samples=10,
            load_seconds=1.0,
            profile_cold_calls=1,
        )
    notes: list[str] = []
    tools: dict[str, str | None] = dict(ensure_tools(notes))
    tools.update(_tools_venv(notes) if not args.no_extras else {})
    tools["anvil"] = find_anvil()
    if args.no_profile:
        tools["py-spy"] = None
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="balances-bench-"))
    try:
        async with AsyncExitStack() as stack:
            print("bench: building the world", flush=True)
            world = await build_chains(stack, sizes)
            main_db, counted_db = workdir / "main.sqlite3", workdir / "counted.sqlite3"
            await build_directories(world, sizes, main_db, counted_db)
            print(f"bench: world built {world.timings}", flush=True)
            print("bench: counted server (upstream calls, payloads)", flush=True)
            captured = await counted_phase(world, sizes, counted_db, workdir)
            print("bench: timed server", flush=True)
            measured = await timed_phase(
                world,
                sizes,
                captured,
                main_db,
                workdir,
                tools,
                profile_targets=lambda m: missed_targets(m, captured, sizes),
            )
            naive = await _naive_web3(tools.get("web3-python"), world, workdir, sizes.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    box = machine(tools)
    box["load average (1 min) before / after"] = f"{load_before[0]:.2f} / {load_after[0]:.2f}"
    table = rows(measured, captured, sizes)
    load = (
        measured.tools.get("grpc", "?") + " (one HTTP/2 connection, N streams in flight)",
        measured.tools.get("rest", "?") + " (N keep-alive connections)",
    )
    if args.note:
        notes.insert(0, args.note)
    command = "make bench" if os.environ.get("MAKELEVEL") else "python -m scripts.bench"
    if args.quick:
        command += " --quick" if command != "make bench" else " (--quick)"
    write_markdown(
        args.output,
        table=table,
        m=measured,
        captured=captured,
        sizes=sizes,
        box=box,
        load=load,
        notes=notes,
        naive=naive,
        elapsed=time.monotonic() - started,
        command=command,
    )
    for row in table:
        mark = {True: "met", False: "MISSED", None: ""}[row.met]
        print(f"{row.path}: {row.service} | {row.reference} | {row.ratio} {row.target} {mark}")
    print(f"bench: wrote {args.output} in {(time.monotonic() - started) / 60:.1f} min")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved A/B rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="each load-generator run")
    parser.add_argument("--output", type=Path, default=_ROOT / "BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="a small world, short runs")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy profiles")
    parser.add_argument("--no-extras", action="store_true", help="no tools venv (py-spy, web3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--note", help="a line for the Notes section (e.g. the machine's load)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
