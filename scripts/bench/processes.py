"""The processes the bench measures: ``balances serve`` and the bare reference servers.

Each is its own process, started through ``service.children`` so it dies with
the bench however the bench ends, and each is measured the same way: requests
counted by the load generator, CPU read from ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from service import children

__all__ = [
    "Server",
    "cpu_seconds",
    "serve_logged",
    "serving_port",
    "start_reference",
    "start_server",
]

_GRPC = re.compile(r"serving gRPC on port (\d+)")
_REST = re.compile(r"serving REST.*? on port (\d+)")
_TICKS = os.sysconf("SC_CLK_TCK")
_ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads), in seconds."""
    # Fields after the command name, which may itself hold spaces or parentheses.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15


@dataclass
class Server:
    """A running process: its pid and the ports it serves."""

    name: str
    process: asyncio.subprocess.Process
    grpc_port: int
    rest_port: int | None
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


async def _stopper(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def serve_logged(
    stack: AsyncExitStack,
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> tuple[asyncio.subprocess.Process, str]:
    """Start a ``balances serve`` command line, logging to ``log_path``, and wait until it
    serves: the process (stopped with SIGTERM when ``stack`` closes) and its log so far.

    Shared by the bench and the scripts under ``scripts/``; started through
    ``service.children`` so the server dies with whoever started it.
    """
    log = log_path.open("wb")
    stack.callback(log.close)
    process = await children.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        cwd=cwd,
        env=dict(env) if env is not None else None,
    )
    stack.push_async_callback(_stopper, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log_path.read_text, errors="replace")
        if _GRPC.search(text):
            return process, text
        if process.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise SystemExit(f"the server did not start; see {log_path}")


async def start_server(stack: AsyncExitStack, name: str, config: Path, workdir: Path) -> Server:
    """``balances serve --config``; returns once it serves (ports read from its log)."""
    balances = str(Path(sys.executable).with_name("balances"))
    log_path = workdir / f"{name}.log"
    argv = (balances, "serve", "--config", str(config))
    process, text = await serve_logged(stack, argv, log_path, cwd=workdir)
    grpc_port = serving_port(text)
    rest = _REST.search(text)
    return Server(name, process, grpc_port, int(rest.group(1)) if rest else None, log_path)


def serving_port(log_text: str) -> int:
    """The gRPC port a ``balances serve`` log says it serves on."""
    found = _GRPC.search(log_text)
    assert found is not None
    return int(found.group(1))


async def start_reference(stack: AsyncExitStack, kind: str, payload: Path) -> Server:
    """A bare reference server (``scripts.bench.references``) answering with ``payload``."""
    process = await children.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench.references",
        kind,
        str(payload),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        cwd=_ROOT,
    )
    stack.push_async_callback(_stopper, process)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if not line.startswith(b"port "):
        raise SystemExit(f"bench: the bare {kind} server did not start")
    port = int(line.split()[1])
    return Server(f"bare {kind}", process, port, port)
