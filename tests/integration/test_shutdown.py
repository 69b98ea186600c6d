"""``balances serve`` as a real process: SIGTERM/SIGINT drain in-flight calls, then exit 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from balances.v1 import balances_pb2 as pb
from service.devchain.world import DemoWorld
from tests.support.processes import processes_in_group
from tests.support.serving import serve_process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _wait_for(condition: object, what: str, timeout: float = 10) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_sigterm_goes_not_serving_drains_in_flight_call_and_exits_0(
    world: DemoWorld, tmp_path: Path
) -> None:
    async with serve_process(world, tmp_path) as served:
        polygon = served.proxies["polygon"]
        polygon.delay = 1.0  # every polygon read now takes a second
        watch = served.health.Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING

        async def customer_balances() -> pb.GetCustomerBalancesResponse:
            return await served.balances.GetCustomerBalances(
                pb.GetCustomerBalancesRequest(customer_id="cus_alice"), timeout=20
            )

        in_flight = asyncio.create_task(customer_balances())
        await _wait_for(lambda: polygon.counts["eth_call"] >= 1, "the polygon read to start")
        assert not in_flight.done()

        served.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()

        async with asyncio.timeout(5):
            update = await watch.read()
        assert update.status == NOT_SERVING
        assert not in_flight.done()  # NOT_SERVING came first; the call is still draining
        watch.cancel()  # a watcher is an in-flight call too: release it

        # A new caller is told to go away: NOT_SERVING, or refused outright.
        try:
            late = await served.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert late.status == NOT_SERVING

        response = await in_flight
        assert response.customer_id == "cus_alice"
        assert response.total_balance.amount == "4106.99"
        assert [w.wallet_id for w in response.wallets] == [
            "wal_alice_ethereum",
            "wal_alice_polygon",
        ]

        code = await served.exit_code(timeout=served.grace_period_seconds + 5)
        elapsed = time.monotonic() - sent
        assert code == 0, "\n".join(served.stderr_lines)
        assert elapsed < served.grace_period_seconds, elapsed
        assert processes_in_group(served.process.pid) == []
    text = "\n".join(served.stderr_lines)
    assert "Traceback" not in text
    assert "stopping: NOT_SERVING" in text
    assert "SECRET-PROVIDER-KEY" not in text


async def test_sigint_exits_0(world: DemoWorld, tmp_path: Path) -> None:
    async with serve_process(world, tmp_path) as served:
        response = await served.balances.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon"), timeout=10
        )
        assert response.balances[0].amount == "42.00"

        served.process.send_signal(signal.SIGINT)
        code = await served.exit_code(timeout=served.grace_period_seconds)
        assert code == 0, "\n".join(served.stderr_lines)
        assert processes_in_group(served.process.pid) == []
    text = "\n".join(served.stderr_lines)
    assert "Traceback" not in text
    assert "KeyboardInterrupt" not in text
