"""A dead provider cannot flood the log: lines collapse per kind, whatever the request rate.

Before the collapse filter every failed upstream attempt wrote a warning and
every failed request an info line: hundreds of lines a second from one dead
node.  Here ``balances serve`` (a real process, its real log handler) reads
through a proxy that answers every request 503 while 8 clients ask as fast as
they can; the lines it writes during the flood are counted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio

from balances.v1 import balances_pb2 as pb
from service.devchain.world import DemoWorld
from tests.support.serving import serve_process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FLOOD_SECONDS = 6.0
CLIENTS = 8
# The filter's budget: 3 lines per kind per 10 s.  The kinds a dead node can cause: a
# provider's fault, a failed request, a network's health changing, the held-back count.
MAX_LINES = 4 * 3 + 4


async def test_a_dead_provider_writes_a_few_lines_not_one_per_request(
    world: DemoWorld, tmp_path: Path
) -> None:
    # No stale answers: every request must fail and say so.
    async with serve_process(
        world, tmp_path, network_changes={"polygon": {"max_stale_seconds": 0}}
    ) as served:
        served.proxies["polygon"].fail_with = 503
        before = len(served.stderr_lines)
        failed = 0
        ends = time.monotonic() + FLOOD_SECONDS

        async def client() -> None:
            nonlocal failed
            while time.monotonic() < ends:
                try:
                    await served.balances.GetWalletBalance(
                        pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon"), timeout=5
                    )
                except aio.AioRpcError as error:
                    assert error.code() is grpc.StatusCode.UNAVAILABLE, error.details()
                    failed += 1

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        await asyncio.sleep(0.2)  # let the last lines reach the pipe
        flood = served.stderr_lines[before:]
    attempts = sum(served.proxies["polygon"].counts.values())
    print(
        f"\n{failed} failed requests ({failed / FLOOD_SECONDS:.0f}/s), "
        f"{len(flood)} log lines ({len(flood) / FLOOD_SECONDS:.1f}/s) in {FLOOD_SECONDS:g}s"
    )
    assert failed >= 100, "the flood was not a flood"
    assert attempts >= 100
    assert len(flood) <= MAX_LINES, "\n".join(flood)
