"""Load generators: h2load for gRPC, wrk for REST, and a Python client when they are missing.

A Python load client spends most of a core of its own and flatters the server
(there is less CPU left to compete with), so the native tools are preferred
and installed when absent (Debian ``nghttp2-client`` and ``wrk``, as root).

h2load counts an HTTP 200 as success even when the gRPC status in the trailers
is an error.  An error answer carries no message, though, so the DATA bytes
h2load reports must equal the successes times the framed response's length:
any shortfall is counted as failed.  Each run is followed by a short Python
pass that checks the status and the bytes as well.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from grpc import aio

from scripts.bench.processes import cpu_seconds

__all__ = [
    "LoadResult",
    "ensure_tools",
    "grpc_frame",
    "parse_h2load",
    "parse_wrk",
    "run_grpc_load",
    "run_rest_load",
]

_APT_PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}


@dataclass
class LoadResult:
    tool: str
    seconds: float
    ok: int
    failed: int
    server_cpu: float | None = None  # seconds of the server's CPU during the run
    command: str = ""

    @property
    def qps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.server_cpu is None or not self.ok:
            return None
        return self.server_cpu / self.ok * 1e6


def ensure_tools(notes: list[str]) -> dict[str, str | None]:
    """Paths of h2load and wrk, installing the Debian packages when missing (as root)."""
    missing = [tool for tool in _APT_PACKAGES if shutil.which(tool) is None]
    apt_get = shutil.which("apt-get")
    if missing and apt_get and _is_root():
        packages = sorted({_APT_PACKAGES[tool] for tool in missing})
        print(f"bench: installing {' '.join(packages)} (apt-get)", flush=True)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        update = subprocess.run([apt_get, "update", "-qq"], env=env, capture_output=True)
        install = subprocess.run(
            [apt_get, "install", "-y", "-qq", *packages], env=env, capture_output=True
        )
        if update.returncode or install.returncode:
            notes.append(f"apt-get install {' '.join(packages)} failed")
    tools = {tool: shutil.which(tool) for tool in _APT_PACKAGES}
    for tool, path in tools.items():
        if path is None:
            notes.append(
                f"{tool} is not installed and could not be: a Python load client stands in "
                "(it uses most of a core itself, so the figures flatter the server)"
            )
    return tools


def _is_root() -> bool:
    return os.geteuid() == 0


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\0" + len(message).to_bytes(4, "big") + message


_H2_FINISHED = re.compile(r"finished in ([\d.]+)(m?s)")
_H2_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")
_H2_DATA = re.compile(r"traffic: .*?, [^,]*\((\d+)\) data")


def parse_h2load(output: str, response_bytes: int) -> tuple[float, int, int]:
    """(seconds, ok, failed) from h2load's report; ``response_bytes`` is one framed answer.

    Successes are capped by the DATA bytes received: a gRPC error is an HTTP 200
    with no message.
    """
    finished = _H2_FINISHED.search(output)
    requests = _H2_REQUESTS.search(output)
    data = _H2_DATA.search(output)
    if not (finished and requests and data):
        raise ValueError(f"unexpected h2load output:\n{output[-1500:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    done, succeeded = int(requests.group(3)), int(requests.group(4))
    with_message = int(data.group(1)) // response_bytes
    ok = min(succeeded, with_message)
    return seconds, ok, done - ok


_WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str) -> tuple[float, int, int]:
    """(seconds, ok, failed) from wrk's report."""
    requests = _WRK_REQUESTS.search(output)
    if not requests:
        raise ValueError(f"unexpected wrk output:\n{output[-1500:]}")
    seconds = float(requests.group(2)) / (1000 if requests.group(3) == "ms" else 1)
    total = int(requests.group(1))
    bad = _WRK_NON_2XX.search(output)
    errors = _WRK_ERRORS.search(output)
    failed = (int(bad.group(1)) if bad else 0) + (
        sum(int(g) for g in errors.groups()) if errors else 0
    )
    return seconds, max(total - (int(bad.group(1)) if bad else 0), 0), failed


def _shown(argv: Sequence[str], api_key: str) -> str:
    """The command as a shell line, with ``$KEY`` where the API key was."""
    line = shlex.join(a.replace(api_key, "@KEY@") for a in argv)
    return re.sub(r"'([^']*)@KEY@([^']*)'", r'"\1$KEY\2"', line)


async def _run(argv: Sequence[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    if process.returncode:
        raise RuntimeError(f"{argv[0]} exited {process.returncode}:\n{text[-1500:]}")
    return text


async def run_grpc_load(
    h2load: str | None,
    *,
    port: int,
    method: str,
    request_file: Path,
    response: bytes,
    api_key: str,
    concurrency: int,
    seconds: float,
    pid: int,
) -> LoadResult:
    """``concurrency`` calls in flight on one HTTP/2 connection for ``seconds``."""
    before = cpu_seconds(pid)
    if h2load is not None:
        argv = [
            h2load, "-D", f"{seconds:g}", "-c", "1", "-m", str(concurrency), "-t", "1",
            "-d", str(request_file),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", f"x-api-key: {api_key}",
            f"http://127.0.0.1:{port}{method}",
        ]  # fmt: skip
        output = await _run(argv)
        took, ok, failed = parse_h2load(output, len(grpc_frame(response)))
        command = _shown(argv, api_key).replace(str(request_file), "req.bin")
        result = LoadResult("h2load", took, ok, failed, command=command)
    else:
        result = await _python_grpc_load(port, method, request_file, response, api_key,
                                         concurrency, seconds)  # fmt: skip
    result.server_cpu = cpu_seconds(pid) - before
    return result


async def _python_grpc_load(
    port: int,
    method: str,
    request_file: Path,
    response: bytes,
    api_key: str,
    concurrency: int,
    seconds: float,
) -> LoadResult:
    request = (await asyncio.to_thread(request_file.read_bytes))[5:]
    counts = {"ok": 0, "failed": 0}
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method, None, None)
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def caller() -> None:
            while time.monotonic() < deadline:
                try:
                    answer = await call(request, metadata=(("x-api-key", api_key),), timeout=10)
                    counts["ok" if answer == response else "failed"] += 1
                except aio.AioRpcError:
                    counts["failed"] += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        took = time.monotonic() - started
    return LoadResult("python grpc.aio client", took, counts["ok"], counts["failed"])


async def run_rest_load(
    wrk: str | None,
    *,
    url: str,
    api_key: str,
    concurrency: int,
    seconds: float,
    pid: int,
) -> LoadResult:
    """``concurrency`` keep-alive connections, one request in flight on each."""
    before = cpu_seconds(pid)
    if wrk is not None:
        argv = [wrk, "-t", "1", "-c", str(concurrency), "-d", f"{seconds:g}s",
                "-H", f"X-API-Key: {api_key}", url]  # fmt: skip
        took, ok, failed = parse_wrk(await _run(argv))
        command = _shown(argv, api_key)
        result = LoadResult("wrk", took, ok, failed, command=command)
    else:
        result = await _python_rest_load(url, api_key, concurrency, seconds)
    result.server_cpu = cpu_seconds(pid) - before
    return result


async def _python_rest_load(url: str, api_key: str, concurrency: int, seconds: float) -> LoadResult:
    counts = {"ok": 0, "failed": 0}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def caller() -> None:
            while time.monotonic() < deadline:
                async with session.get(url, headers={"X-API-Key": api_key}) as answer:
                    await answer.read()
                    counts["ok" if answer.status == 200 else "failed"] += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        took = time.monotonic() - started
    return LoadResult("python aiohttp client", took, counts["ok"], counts["failed"])
