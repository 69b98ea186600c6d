"""Child processes: running a tool from an async test, watching a ``balances serve`` one,
and finding what a process left behind.

Tests start processes through ``service.children`` (a drop-in for
``asyncio.create_subprocess_exec`` and ``subprocess.Popen``): they die with the
test run however it ends.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

from service import children


async def run_tool(
    *command: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); the process is killed if it outlives ``timeout``."""
    process = await children.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


SERVING_LINE = re.compile(r"serving gRPC on port (\d+)")


def processes_in_group(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes started with ``name=value`` in their environment (from /proc).

    Children inherit the environment and keep it when re-parented, so a marker
    set for one process finds everything it started, even orphans.
    """
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if wanted in environment and state != "Z":
            found.append(int(entry.name))
    return found


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler installed for ``sig`` (SigCgt in /proc/PID/status)."""
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    raise AssertionError(f"no SigCgt for process {pid}")


def command_line(pid: int) -> str:
    """The process's command line, for messages (empty once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def read_stderr_until_serving(
    stream: asyncio.StreamReader, lines: list[str], timeout: float = 30
) -> int:
    """Read ``balances serve``'s stderr into ``lines`` until it says it serves; its gRPC port."""
    async with asyncio.timeout(timeout):
        while raw := await stream.readline():
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if match := SERVING_LINE.search(line):
                return int(match.group(1))
    raise AssertionError("balances serve exited before serving:\n" + "\n".join(lines))


async def drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    """Read ``stream`` to its end into ``lines``."""
    while raw := await stream.readline():
        lines.append(raw.decode().rstrip("\n"))
