"""Nothing the demo or the tests start outlives them, however they end.

``balances demo --port 0 --rest-port 0`` runs as a real process in its own
session, with a marker in its environment: anvil inherits the marker and keeps
it when orphaned, so /proc finds everything the demo started (its process
group, and the anvils in sessions of their own) wherever it ended up.

- SIGTERM at random moments spread over the demo's whole start-up window (from
  launch to "serving", measured by a first run): it exits non-zero with one
  line (or 0 after a graceful stop, if it was already serving; or killed by the
  signal while the interpreter was still starting, before anything ran), and
  nothing of it is left.
- SIGTERM while ``balances serve`` starts (held by slow nodes): one line, exit 143.
- SIGKILL of the demo (no clean-up of its own can run) leaves no anvil behind.
- A pytest session killed with SIGKILL while its ``anvil`` fixture is up leaves
  no anvil behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service import children
from service.devchain.world import DemoWorld
from tests.support.cli import BALANCES
from tests.support.processes import (
    catches,
    command_line,
    drain,
    processes_in_group,
    processes_with_env,
)
from tests.support.rpc_proxy import CountingProxy
from tests.support.stack import write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
MARKER = "BALANCES_ORPHAN_PROBE"
SERVING = "Balances demo is serving"
FIRST_CHAIN = "anvil chain 31337 listening"
STOPPED_LINE = "balances: stopped by SIGTERM during start-up"
RUNS = 20


@dataclass
class Run:
    """One ``balances demo`` process, leader of its own session, and what it printed."""

    process: asyncio.subprocess.Process
    marker: str
    started: float
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    drains: list[asyncio.Task[None]] = field(default_factory=list)

    def leftovers(self) -> list[int]:
        found = processes_in_group(self.process.pid) + processes_with_env(MARKER, self.marker)
        return sorted(set(found))

    async def until_printed(self, text: str, timeout: float = 60) -> float:
        """Seconds from launch until ``text`` appeared on stdout or stderr."""
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.stdout + self.stderr):
                if self.process.returncode is not None:
                    raise AssertionError(f"demo exited before {text!r}:\n{self.output()}")
                await asyncio.sleep(0.01)
        return time.monotonic() - self.started

    async def exit_code(self, timeout: float = 30) -> int:
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                for task in self.drains:
                    await task
        except TimeoutError:
            raise AssertionError(
                f"demo still running after {timeout:g}s:\n{self.output()}"
            ) from None
        return code

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])


@asynccontextmanager
async def demo(tmp_path: Path) -> AsyncIterator[Run]:
    """``balances demo`` with free ports; whatever it leaves is SIGKILLed at the end."""
    marker = uuid.uuid4().hex
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    process = await children.create_subprocess_exec(
        str(BALANCES), "demo", "--port", "0", "--rest-port", "0",
        "--state", str(tmp_path / "demo.json"), "--workdir", str(tmp_path / "demo"),
        cwd=tmp_path, env={**os.environ, MARKER: marker, "BALANCES_LOG_LEVEL": "INFO"},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    run = Run(process, marker, time.monotonic())
    assert process.stdout is not None and process.stderr is not None
    run.drains = [
        asyncio.create_task(drain(process.stdout, run.stdout)),
        asyncio.create_task(drain(process.stderr, run.stderr)),
    ]
    try:
        yield run
    finally:
        if process.returncode is None:
            process.kill()
        for pid in run.leftovers():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(TimeoutError):
            await run.exit_code(timeout=10)


async def assert_nothing_left(run: Run, context: str) -> None:
    """Nothing of the demo's group and nothing carrying its marker remains (10 s to die)."""
    deadline = time.monotonic() + 10
    while left := run.leftovers():
        if time.monotonic() > deadline:
            listing = "\n".join(f"  {pid} {command_line(pid)}" for pid in left)
            raise AssertionError(f"{context}: left behind:\n{listing}\n{run.output()}")
        await asyncio.sleep(0.05)


def check_exit(run: Run, code: int, context: str, *, handled: bool = True) -> str:
    """How the demo ended, checked: killed before main, stopped during start-up, or served.

    ``handled``: the demo had its SIGTERM handler installed when the signal was sent.
    """
    where = f"{context}, exit {code}:\n{run.output()}"
    stderr = "\n".join(run.stderr)
    for noise in ("Traceback", "Exception ignored", "never awaited", "Task was destroyed"):
        assert noise not in stderr, where
    ours = [line for line in run.stderr if line.startswith("balances:")]
    if code == -signal.SIGTERM:
        # The signal came while the interpreter was still importing, before main
        # installed its handlers: Python's default action, and nothing had started.
        assert not handled, where
        assert ours == [] and run.stdout == [], where
        return "killed before main"
    if code == 128 + signal.SIGTERM:
        assert ours == [STOPPED_LINE], where
        return "stopped during start-up"
    assert code == 0, where
    assert ours == [], where
    assert any(SERVING in line for line in run.stdout), where
    assert run.stdout[-1:] == ["demo stopped: server and chains are down"], where
    return "graceful stop"


async def test_sigterm_at_any_moment_of_demo_start_up_leaves_nothing(tmp_path: Path) -> None:
    """A first run measures the start-up window and stops gracefully; then SIGTERM
    at ``RUNS`` random moments, one in each of ``RUNS`` equal slices of the window."""
    async with demo(tmp_path / "measure") as first:
        window = await first.until_printed(SERVING)
        marked = processes_with_env(MARKER, first.marker)
        # The marker finds the demo and both anvils (in sessions of their own).
        assert len(marked) >= 3, [command_line(pid) for pid in marked]
        first.process.send_signal(signal.SIGTERM)
        assert check_exit(first, await first.exit_code(), "serving") == "graceful stop"
        await assert_nothing_left(first, "SIGTERM while serving")

    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    moments = [(i + rng.random()) * window / RUNS for i in range(RUNS)]
    rng.shuffle(moments)
    outcomes: Counter[str] = Counter()
    for index, moment in enumerate(moments):
        context = (
            f"run {index}, SIGTERM {moment:.3f}s after launch (window {window:.2f}s, seed {seed})"
        )
        async with demo(tmp_path / f"run{index}") as run:
            await asyncio.sleep(max(0.0, run.started + moment - time.monotonic()))
            handled = catches(run.process.pid, signal.SIGTERM)
            run.process.send_signal(signal.SIGTERM)
            outcome = check_exit(run, await run.exit_code(), context, handled=handled)
            await assert_nothing_left(run, context)
            outcomes[outcome] += 1
    print(f"window {window:.2f}s, seed {seed}: {dict(outcomes)}", file=sys.stderr)
    assert outcomes["stopped during start-up"] >= 1, dict(outcomes)


@pytest.mark.parametrize("when", [FIRST_CHAIN, SERVING])
async def test_sigkill_of_the_demo_leaves_no_anvil(tmp_path: Path, when: str) -> None:
    async with demo(tmp_path) as run:
        await run.until_printed(when)
        anvils = [
            pid
            for pid in processes_with_env(MARKER, run.marker)
            if pid != run.process.pid and "anvil" in command_line(pid)
        ]
        assert anvils, run.output()  # the check below can fail
        run.process.kill()  # the demo alone, as the OOM killer would
        assert await run.exit_code() == -signal.SIGKILL
        await assert_nothing_left(run, f"SIGKILL once {when!r}")


async def test_sigterm_while_serve_starts_stops_it_in_one_line(
    world: DemoWorld, tmp_path: Path
) -> None:
    """``balances serve`` held in start-up (its nodes answer slowly), then SIGTERM."""
    async with AsyncExitStack() as stack:
        proxies = {
            name: await stack.enter_async_context(CountingProxy(network.rpc_url))
            for name, network in world.networks.items()
        }
        for proxy in proxies.values():
            proxy.delay = 30.0  # the start-up's chain check waits on them
        config = await write_stack_config(
            world, tmp_path, {name: [p.url] for name, p in proxies.items()}
        )
        process = await children.create_subprocess_exec(
            str(BALANCES), "serve", "--config", str(config.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert process.stderr is not None
        lines: list[str] = []
        reading = asyncio.create_task(drain(process.stderr, lines))
        try:
            deadline = time.monotonic() + 30
            while not any(p.counts["eth_chainId"] for p in proxies.values()):
                assert time.monotonic() < deadline and process.returncode is None, lines
                await asyncio.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 20)
            await asyncio.wait_for(reading, 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    where = "\n".join(lines)
    assert code == 128 + signal.SIGTERM, where
    assert "Traceback" not in where
    assert [line for line in lines if line.startswith("balances:")] == [STOPPED_LINE], where
    assert processes_in_group(process.pid) == []


INNER_TEST = """
import asyncio
import os
from pathlib import Path

import pytest


@pytest.mark.asyncio(loop_scope="session")
async def test_holds_the_anvil(anvil):
    Path(os.environ["ANVIL_PID_FILE"]).write_text(str(anvil.pid))
    await asyncio.sleep(120)
"""


async def test_a_killed_pytest_session_leaves_no_anvil(tmp_path: Path) -> None:
    """An inner pytest using the repo's ``anvil`` fixture, SIGKILLed while its anvil runs."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    pid_file = tmp_path / "anvil.pid"
    marker = uuid.uuid4().hex
    process = await children.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-p", "tests.integration.conftest", "-c", str(ROOT / "pyproject.toml"),
        "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py"),
        cwd=ROOT,
        env={**os.environ, MARKER: marker, "ANVIL_PID_FILE": str(pid_file), "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    output: list[str] = []
    reading = asyncio.create_task(drain(process.stdout, output))
    try:
        async with asyncio.timeout(60):
            while not pid_file.exists() or not pid_file.read_text():
                assert process.returncode is None, "\n".join(output)
                await asyncio.sleep(0.05)
        anvil_pid = int(pid_file.read_text())
        assert "anvil" in command_line(anvil_pid)
        assert anvil_pid in processes_with_env(MARKER, marker)
        process.kill()
        assert await asyncio.wait_for(process.wait(), 10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while left := processes_with_env(MARKER, marker) + processes_in_group(process.pid):
            assert time.monotonic() < deadline, [command_line(pid) for pid in left]
            await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.kill()
        for pid in processes_with_env(MARKER, marker):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
        await asyncio.wait_for(reading, 10)


# ------------------------------------------------------------- service.children itself


PARENT = """
import sys, time
from service import children

child = children.popen(["sleep", "300"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


async def test_a_child_dies_with_its_sigkilled_parent() -> None:
    """A child in a session of its own (it hears no signal sent to its parent's group)."""
    parent = await children.create_subprocess_exec(
        sys.executable, "-c", PARENT, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert parent.stdout is not None
    try:
        async with asyncio.timeout(20):
            child = int(await parent.stdout.readline())
            while command_line(child) != "sleep 300 ":  # the wrapper has not exec'd it yet
                assert parent.returncode is None
                await asyncio.sleep(0.01)
        parent.kill()
        await parent.wait()
        deadline = time.monotonic() + 10
        while processes_in_group(child):  # it leads its group; a zombie does not count
            assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
            await asyncio.sleep(0.02)
    finally:
        if parent.returncode is None:
            parent.kill()
        await parent.wait()


async def test_a_child_whose_parent_died_before_prctl_never_runs(tmp_path: Path) -> None:
    """The race: the parent gone before the wrapper set the signal.  The wrapper
    sees a different parent and ends itself instead of running the program."""
    touched = tmp_path / "ran"
    argv = children.child_argv(["/bin/sh", "-c", f"touch {touched}"])
    argv[argv.index(str(os.getpid()))] = "1"  # as if re-parented to init already
    process = await asyncio.create_subprocess_exec(*argv)  # already wrapped
    assert await asyncio.wait_for(process.wait(), 20) == -children.DEATH_SIGNAL
    assert not await asyncio.to_thread(touched.exists)


async def test_the_program_runs_with_its_arguments_and_a_missing_one_fails_at_once(
    tmp_path: Path,
) -> None:
    script = 'test "$1" = "a b" && exit 7'
    done = await children.create_subprocess_exec("sh", "-c", script, "sh", "a b", cwd=tmp_path)
    assert await asyncio.wait_for(done.wait(), 20) == 7
    with pytest.raises(FileNotFoundError):
        await children.create_subprocess_exec("no-such-program-here")
    with pytest.raises(FileNotFoundError):
        await children.create_subprocess_exec("./missing", cwd=tmp_path)
    with pytest.raises(FileNotFoundError):
        children.popen(["no-such-program-here"])
