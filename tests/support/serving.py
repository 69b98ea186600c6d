"""``balances serve`` as a real process behind counting proxies, for tests of its whole life."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balances.v1 import balances_pb2_grpc
from service import children
from service.devchain.world import DemoWorld
from tests.support.cli import BALANCES
from tests.support.processes import drain, processes_in_group, read_stderr_until_serving
from tests.support.rpc_proxy import CountingProxy
from tests.support.stack import keyed_channel, write_stack_config

SERVING = health_pb2.HealthCheckResponse.SERVING


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
async def serve_process(
    world: DemoWorld,
    tmp_path: Path,
    *,
    network_changes: Mapping[str, Mapping[str, Any]] | None = None,
    **changes: Any,
) -> AsyncIterator[ServeProcess]:
    """``balances serve --config FILE`` in its own process group, through counting proxies;
    ``changes``: fields of ``Settings`` (as ``write_stack_config`` takes them)."""
    async with AsyncExitStack() as stack:
        proxies = {
            name: await stack.enter_async_context(CountingProxy(network.rpc_url))
            for name, network in world.networks.items()
        }
        config = await write_stack_config(
            world,
            tmp_path,
            {name: [p.url] for name, p in proxies.items()},
            network_changes=network_changes,
            **changes,
        )
        process = await children.create_subprocess_exec(
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


@dataclass
class Served:
    """One ``balances serve`` process (leader of its own process group)."""

    process: asyncio.subprocess.Process
    port: int
    lines: list[str]
    drain: asyncio.Task[None]

    @property
    def pgid(self) -> int:
        return self.process.pid


async def start_serving(config_path: Path) -> Served:
    process = await children.create_subprocess_exec(
        str(BALANCES), "serve", "--config", str(config_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    try:
        port = await read_stderr_until_serving(process.stderr, lines, timeout=15)
    except BaseException:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    # Keep reading stderr: a full pipe would block the server's logging.
    return Served(process, port, lines, asyncio.create_task(drain(process.stderr, lines)))


async def kill_9(served: Served) -> None:
    """SIGKILL to the whole process group; returns when nothing of it is left."""
    with suppress(ProcessLookupError):
        os.killpg(served.pgid, signal.SIGKILL)
    await asyncio.wait_for(served.process.wait(), 10)
    deadline = time.monotonic() + 10
    while processes_in_group(served.pgid):
        assert time.monotonic() < deadline, "the process group outlived SIGKILL"
        await asyncio.sleep(0.02)
    await asyncio.wait_for(served.drain, 10)
