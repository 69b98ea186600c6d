"""Ports are shared only on purpose: a second plain ``balances serve`` fails in one line;
``balances serve --workers N`` runs N processes on one port and stops them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service import children
from service.devchain.world import DemoWorld
from service.settings import RestSettings
from tests.support.cli import BALANCES, run_balances
from tests.support.processes import drain, processes_in_group
from tests.support.stack import StackConfig, keyed_channel, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PLAIN_SERVING = re.compile(r"serving gRPC on port (\d+)")
REST_SERVING = re.compile(r"serving REST on port (\d+)")
WORKERS_SERVING = re.compile(
    r"(\d+) workers serving gRPC on port (\d+), REST on port (\d+) \(pids ([\d ]+)\)"
)


@dataclass
class Served:
    process: asyncio.subprocess.Process
    match: re.Match[str]
    lines: list[str] = field(default_factory=list)

    def group(self) -> list[int]:
        return processes_in_group(self.process.pid)


@asynccontextmanager
async def served(config: StackConfig, *args: str, ready: re.Pattern[str]) -> AsyncIterator[Served]:
    """``balances serve --config FILE ARGS`` in its own process group, until ``ready`` is logged;
    whatever is left of the group is killed on exit."""
    async with AsyncExitStack() as stack:
        process = await children.create_subprocess_exec(
            str(BALANCES), "serve", "--config", str(config.path), *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

        async def kill_leftovers() -> None:
            for pid in processes_in_group(process.pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await process.wait()

        stack.push_async_callback(kill_leftovers)
        assert process.stderr is not None
        lines: list[str] = []
        async with asyncio.timeout(60):
            while raw := await process.stderr.readline():
                lines.append(raw.decode().rstrip("\n"))
                if match := ready.search(lines[-1]):
                    break
            else:
                raise AssertionError("serve exited before serving:\n" + "\n".join(lines))
        draining = asyncio.create_task(drain(process.stderr, lines))

        async def kill_then_drain() -> None:
            await kill_leftovers()
            await asyncio.wait_for(draining, 10)

        stack.push_async_callback(kill_then_drain)
        yield Served(process, match, lines)


async def _config(world: DemoWorld, tmp_path: Path, grpc_port: int = 0, rest_port: int = 0,
                  ) -> StackConfig:  # fmt: skip
    return await write_stack_config(
        world,
        tmp_path,
        {name: [network.rpc_url] for name, network in world.networks.items()},
        listen=f"127.0.0.1:{grpc_port}",
        rest=RestSettings(listen=f"127.0.0.1:{rest_port}"),
    )


def _one_line(code: int, err: str) -> str:
    """The single ``balances:`` line of a failed start (the start's own logs may precede it)."""
    assert code != 0
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("balances:")]
    return line


async def test_a_second_plain_serve_on_a_busy_port_exits_with_one_line(
    world: DemoWorld, tmp_path: Path
) -> None:
    first = await _config(world, tmp_path / "first")
    async with served(first, ready=PLAIN_SERVING) as running:
        grpc_port = int(running.match.group(1))
        [rest_port] = [
            int(m.group(1)) for line in running.lines if (m := REST_SERVING.search(line))
        ]
        # The gRPC port taken: grpcio would share it (SO_REUSEPORT) if we let it.
        second = await _config(world, tmp_path / "second", grpc_port=grpc_port)
        code, _out, err = await run_balances("serve", "--config", str(second.path), cwd=tmp_path)
        line = _one_line(code, err)
        assert line == f"balances: cannot listen on 127.0.0.1:{grpc_port}: the address is in use"
        # The REST port taken, the gRPC one free.
        third = await _config(world, tmp_path / "third", rest_port=rest_port)
        code, _out, err = await run_balances("serve", "--config", str(third.path), cwd=tmp_path)
        line = _one_line(code, err)
        assert line.startswith(f"balances: cannot listen on 127.0.0.1:{rest_port}: ")
        assert line.endswith("in use")
        # And a supervisor does not share a plainly served port either.
        code, _out, err = await run_balances(
            "serve", "--config", str(second.path), "--workers", "2", cwd=tmp_path
        )
        line = _one_line(code, err)
        assert line == f"balances: cannot listen on 127.0.0.1:{grpc_port}: the address is in use"
        assert running.process.returncode is None


def _server_sockets(port: int, client_ports: set[int]) -> dict[int, int]:
    """Inode of each established server-side socket on ``port``, by its client's port."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(FileNotFoundError), open(table) as rows:
            next(rows)
            for row in rows:
                cells = row.split()
                local, remote, state, inode = cells[1], cells[2], cells[3], int(cells[9])
                local_port = int(local.rsplit(":", 1)[1], 16)
                remote_port = int(remote.rsplit(":", 1)[1], 16)
                if state == "01" and local_port == port and remote_port in client_ports:
                    found[remote_port] = inode
    return found


def _socket_owners(pids: Sequence[int]) -> dict[int, int]:
    """Socket inode -> the pid holding it, among ``pids``."""
    owners = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = pid
    return owners


async def _who_accepts(port: int, pids: Sequence[int], connections: int = 40) -> list[int]:
    """Open ``connections`` fresh TCP connections to ``port``: the pid that accepted each."""
    writers = []
    try:
        for _ in range(connections):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
        clients = {w.get_extra_info("sockname")[1] for w in writers}
        async with asyncio.timeout(10):
            while True:
                inodes = _server_sockets(port, clients)
                owners = _socket_owners(pids)
                if len(inodes) == connections and all(i in owners for i in inodes.values()):
                    return [owners[i] for i in inodes.values()]
                await asyncio.sleep(0.05)
    finally:
        for writer in writers:
            writer.close()


async def test_workers_share_both_ports_and_sigterm_stops_every_process(
    world: DemoWorld, tmp_path: Path
) -> None:
    config = await _config(world, tmp_path)
    async with served(config, "--workers", "2", ready=WORKERS_SERVING) as running:
        count, grpc_port, rest_port, pids = running.match.groups()
        workers = [int(pid) for pid in pids.split()]
        assert count == "2" and len(set(workers)) == 2 and running.process.pid not in workers
        assert sorted(running.group()) == sorted([running.process.pid, *workers])
        for port in (int(grpc_port), int(rest_port)):
            accepted_by = await _who_accepts(port, workers)
            assert set(accepted_by) == set(workers), (port, accepted_by)  # both, none else
        # Real answers on fresh connections, wherever they land; health needs no key.
        for _ in range(6):
            async with keyed_channel(f"127.0.0.1:{grpc_port}", config.api_key) as channel:
                answer = await balances_pb2_grpc.BalancesServiceStub(channel).GetCustomerBalances(
                    pb.GetCustomerBalancesRequest(customer_id="cus_alice"), timeout=20
                )
                assert answer.wallets
        code, out, _err = await run_balances(
            "health", "--target", f"127.0.0.1:{grpc_port}", cwd=tmp_path
        )
        assert (code, out) == (0, "SERVING\n")
        # A plain serve cannot take the workers' port.
        busy = await _config(world, tmp_path / "busy", grpc_port=int(grpc_port))
        code, _out, err = await run_balances("serve", "--config", str(busy.path), cwd=tmp_path)
        assert _one_line(code, err).endswith(f"127.0.0.1:{grpc_port}: the address is in use")

        running.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await running.process.wait() == 0
        assert running.group() == []  # no worker outlives the supervisor
    stopping = [line for line in running.lines if "stopping: NOT_SERVING" in line]
    assert len(stopping) == 2  # each worker drained gracefully
    code, out, _err = await run_balances(
        "health", "--target", f"127.0.0.1:{grpc_port}", "--timeout", "1", cwd=tmp_path
    )
    assert code == 1 and out.startswith(f"no answer from 127.0.0.1:{grpc_port}: ")


async def test_a_worker_that_dies_stops_the_others_with_a_logged_line(
    world: DemoWorld, tmp_path: Path
) -> None:
    config = await _config(world, tmp_path)
    async with served(config, "--workers", "2", ready=WORKERS_SERVING) as running:
        workers = [int(pid) for pid in running.match.group(4).split()]
        os.kill(workers[1], signal.SIGKILL)
        async with asyncio.timeout(30):
            assert await running.process.wait() == 1
        assert running.group() == []
    [line] = [line for line in running.lines if "exited with code" in line]
    assert f"worker 2 (pid {workers[1]}) exited with code -9: stopping the others" in line
