"""Provider faults, measured: every fault mode with one URL and with two, against real anvil.

For each fault of ``tests.support.fault_proxy.FaultProxy`` (and a node killed and
restarted) a real server reads a polygon-like anvil chain with the faulty provider
as its only URL, then as the first of two (the second healthy).  ``--requests``
reads (``GetWalletBalance`` and ``GetCustomerBalances``, ``--concurrency`` at a
time, each with a ``--deadline``) run while the fault is on; every amount is
compared with the chain at the block the response names.  Printed per scenario:

* failed: requests that got an error while the fault was on (and their codes);
* wrong: amounts that differ from the chain (the promise: 0);
* fail over: two URLs, the first read's time under the fault / the slowest read's;
  one URL, the median time to an error;
* return: from the fault's end until the first URL answers a read again (bounded
  by ``recovery_seconds``, or the provider's ``Retry-After``), and how many reads
  failed meanwhile;
* stale: how many answers were the last good read, marked ``stale`` (stale-if-error).

    .venv/bin/python scripts/provider_faults.py [--requests 48] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.devchain.anvil import AnvilNode
from tests.support.fault_proxy import Fault
from tests.support.provider_faults import (
    Report,
    Tuning,
    fault_scenario,
    killed_node_scenario,
    polygon_world,
)


def row(report: Report, tuning: Tuning) -> str:
    codes = ", ".join(f"{code} {n}" for code, n in sorted(report.codes.items()))
    failed = f"{len(report.failed)}/{len(report.outcomes)}" + (f" ({codes})" if codes else "")
    returned = "never" if report.returned_after is None else f"{report.returned_after:.3f}s"
    if report.failed_after:  # e.g. Retry-After: the provider is not asked until then
        returned += f" ({len(report.failed_after)}/{len(report.after)} failed meanwhile)"
    verdict = "ok" if not report.problems(tuning) else "PROBLEM"
    return (
        f"| {report.fault} | {report.urls} | {failed} | {len(report.wrong)} | "
        f"{report.failover()} | {returned} | {len(report.stale)} | {verdict} |"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=3.0)
    parser.add_argument("--stall", type=float, default=5.0)
    parser.add_argument("--recovery-seconds", type=float, default=2.0)
    parser.add_argument("--hedge-floor-seconds", type=float, default=0.2)
    parser.add_argument("--retry-after", type=int, default=2)
    parser.add_argument("--only", help="fault names to run, comma separated (e.g. stall,lagging)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the service logs every fault: not here
    tuning = Tuning(
        recovery_seconds=args.recovery_seconds,
        hedge_floor_seconds=args.hedge_floor_seconds,
        deadline=args.deadline,
        stall_seconds=args.stall,
        retry_after=args.retry_after,
        requests=args.requests,
        concurrency=args.concurrency,
    )
    wanted = set(args.only.split(",")) if args.only else None
    faults = [f for f in Fault if wanted is None or f.name.lower() in wanted]
    print(
        f"{tuning.requests} reads per scenario, {tuning.concurrency} at a time, "
        f"deadline {tuning.deadline:g}s; recovery_seconds {tuning.recovery_seconds:g}, "
        f"hedge_floor_seconds {tuning.hedge_floor_seconds:g}, stall {tuning.stall_seconds:g}s, "
        f"Retry-After {tuning.retry_after}s\n"
    )
    print("| fault | URLs | failed | wrong | fail over | return to 1st URL | stale | |")
    print("|---|---|---|---|---|---|---|---|")
    problems = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="provider-faults-") as scratch:
        async with AnvilNode(chain_id=31337) as node:
            world = await polygon_world(node.url)
            for i, fault in enumerate(faults):
                for urls in (1, 2):
                    where = Path(scratch) / f"{i}-{urls}"
                    report = await fault_scenario(world, node.url, where, fault, urls, tuning)
                    problems += bool(report.problems(tuning))
                    print(row(report, tuning), flush=True)
        if wanted is None or "killed" in wanted:
            for urls in (1, 2):
                report = await killed_node_scenario(Path(scratch) / f"killed-{urls}", urls, tuning)
                problems += bool(report.problems(tuning))
                print(row(report, tuning), flush=True)
    print(f"\n{problems} scenario(s) with problems; {time.monotonic() - started:.0f}s in all")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
