"""Where the server's time goes: py-spy attached to the running server, summarised.

py-spy samples the server from outside (no restart, no instrumentation).
With ``--gil`` it samples only the thread holding the GIL: the shares are of
the time the interpreter was busy, which is what bounds a single-process
asyncio server.  C code run under the GIL (grpc's Cython core, protobuf) is
charged to the Python frame that called it, often the event loop's
``Handle._run``.  The summary lists the functions with the largest share
of samples: on their own (self) and with what they call (inclusive).
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Profile", "profiled", "summarise"]

# Where a sample's stack passes through: the first area that matches, from the top of the
# stack (the innermost frame) down, takes the sample.
_AREAS = (
    ("eth_abi / eth_utils (ABI encoding and decoding)", ("eth_abi/", "eth_utils/", "eth_typing/")),
    ("SQLite store", ("sqlite3/", "service/store/")),
    ("aiocache", ("aiocache/",)),
    ("JSON", ("json/",)),
    ("protobuf / proto conversion", ("google/protobuf", "service/api/convert")),
    ("aiohttp (JSON-RPC client, REST shim)", ("aiohttp/", "service/gateway/")),
    ("grpc (aio server and channel)", ("grpc/",)),
    ("service chain adapter", ("service/chain/",)),
    ("service watch", ("service/watch/",)),
    ("service other", ("service/",)),
    ("asyncio event loop", ("asyncio/",)),
)
_PLUMBING = (
    "(asyncio/",
    "(threading.py)",
    "(concurrent/futures/",
    "(service/cli.py)",
    "(service/stop_signals.py)",
    "(service/background.py)",
    "<module>",
)
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass
class Profile:
    title: str
    samples: int = 0
    self_share: list[tuple[str, float]] = field(default_factory=list)
    inclusive_share: list[tuple[str, float]] = field(default_factory=list)
    areas: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def _short(frame: str) -> str:
    """``name (path/to/module.py)`` with the path cut to the project or package part."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("/site-packages/", "/lib/python3", "/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('name')} ({path})"


def _area(frames: list[str]) -> str:
    if frames and frames[-1].startswith("Handle._run "):
        return "C code called from the event loop (grpc's Cython core, asyncio's C tasks)"
    for frame in reversed(frames):
        for area, markers in _AREAS:
            if any(marker in frame for marker in markers):
                return area
    return "other"


def summarise(title: str, raw: str, top: int = 15) -> Profile:
    """Top functions by self and inclusive share of the collapsed stacks in ``raw``."""
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        area = _area(stack.split(";"))
        areas[area] += count
        for frame in set(frames):
            inclusive[frame] += count
    profile = Profile(title, total)
    if total:
        profile.self_share = [(f, n / total) for f, n in own.most_common(top)]
        # Skip the frames that hold every sample (the loop, threads, the entry point).
        ranked = [
            (f, n / total)
            for f, n in inclusive.most_common()
            if not any(marker in f for marker in _PLUMBING)
        ]
        profile.inclusive_share = ranked[:top]
        profile.areas = [(a, n / total) for a, n in areas.most_common()]
    return profile


@asynccontextmanager
async def profiled(
    py_spy: str | None, pid: int, title: str, out_dir: Path, results: list[Profile]
) -> AsyncIterator[None]:
    """Sample ``pid`` while the block runs; append the summary to ``results``."""
    if py_spy is None:
        yield
        return
    out = out_dir / f"profile-{len(results)}.txt"
    process = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
        "--rate", "250", "--gil", "--function", "--duration", "600",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # attached
    try:
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        log, _ = await process.communicate()
        try:
            results.append(summarise(title, await asyncio.to_thread(out.read_text)))
        except OSError:
            text = log.decode(errors="replace").strip().splitlines()
            results.append(Profile(title, error=text[-1] if text else "py-spy wrote nothing"))
