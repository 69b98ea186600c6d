"""Child processes: running a tool from an async test, and watching a ``balances serve`` one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path


async def run_tool(
    *command: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); the process is killed if it outlives ``timeout``."""
    process = await asyncio.create_subprocess_exec(
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
