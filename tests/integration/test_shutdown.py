"""``balances serve`` as a real process: SIGTERM/SIGINT drain in-flight calls, then exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.devchain.world import DemoWorld
from tests.support.cli import BALANCES
from tests.support.processes import drain, processes_in_group, read_stderr_until_serving
from tests.support.rpc_proxy import CountingProxy
from tests.support.stack import keyed_channel, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    proxies: dict[str, CountingProxy]
    grace_period_seconds: float
    channel: aio.Channel
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    @property
    def balances(self) -> balances_pb2_grpc.BalancesServiceStub:
        return balances_pb2_grpc.BalancesServiceStub(self.channel)

    async def exit_code(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            return await self.process.wait()


@asynccontextmanager
async def serve_process(world: DemoWorld, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    """``balances serve --config FILE`` in its own process group, through counting proxies."""
    async with AsyncExitStack() as stack:
        proxies = {
            name: await stack.enter_async_context(CountingProxy(network.rpc_url))
            for name, network in world.networks.items()
        }
        config = await write_stack_config(
            world, tmp_path, {name: [p.url] for name, p in proxies.items()}
        )
        process = await asyncio.create_subprocess_exec(
            str(BALANCES),
            "serve",
            "--config",
            str(config.path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: what it leaves behind is findable
        )

        drains: list[asyncio.Task[None]] = []

        async def kill_leftovers() -> None:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pid in processes_in_group(process.pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for drain in drains:
                await asyncio.wait_for(drain, 10)

        stack.push_async_callback(kill_leftovers)
        assert process.stderr is not None
        lines: list[str] = []
        port = await read_stderr_until_serving(process.stderr, lines)
        drains.append(asyncio.create_task(drain(process.stderr, lines)))
        channel = keyed_channel(f"127.0.0.1:{port}", config.api_key)
        stack.push_async_callback(channel.close)
        running = ServeProcess(
            process,
            proxies,
            config.settings.grace_period_seconds,
            channel,
            lines,
        )
        check = await running.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == SERVING
        for proxy in proxies.values():
            proxy.reset()
        yield running


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
