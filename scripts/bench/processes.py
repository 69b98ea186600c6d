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
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from service import children

__all__ = ["Server", "cpu_seconds", "start_reference", "start_server"]

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


async def start_server(stack: AsyncExitStack, name: str, config: Path, workdir: Path) -> Server:
    """``balances serve --config``; returns once it serves (ports read from its log)."""
    balances = str(Path(sys.executable).with_name("balances"))
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    stack.callback(log.close)
    process = await children.create_subprocess_exec(
        balances,
        "serve",
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        cwd=workdir,
    )
    stack.push_async_callback(_stopper, process)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = _GRPC.search(text)
        if found:
            rest = _REST.search(text)
            return Server(
                name, process, int(found.group(1)), int(rest.group(1)) if rest else None, log_path
            )
        if process.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise SystemExit(f"bench: the {name} server did not start; see {log_path}")


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
