"""A real anvil node on a free local port, as an async context manager.

``async with AnvilNode(chain_id=137) as node:`` starts anvil, waits until it
listens and answers ``eth_chainId``, and on exit stops it and its whole process
group, so no process outlives the block. ``stop()``/``start()`` let a test take
the node down and bring it back on the same port; with ``keep_state`` (the
default) the chain comes back as it was (anvil ``--state``: dumped on stop,
loaded on start).

The first start binds port 0, and the port is read from anvil's own
``Listening on`` line, so two nodes never race for one port. anvil's output
(banner and one line per request) is drained and dropped, keeping only the last
lines for error messages.

anvil dies with this process however it ends, SIGKILL included: it is started
through ``service.children`` (the parent-death signal, on Linux).  It still gets
a session of its own: Ctrl-C in a terminal signals the whole foreground process
group, and anvil must not quit under the server that reads from it before the
demo stops them in order; and its own group lets ``stop()`` signal anything it
started.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from service import children
from service.devchain.rpc import rpc_call

__all__ = ["AnvilFactory", "AnvilNode", "AnvilNotFoundError", "AnvilStartError", "find_anvil"]

_log = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_STOP_GRACE_SECONDS = 5.0
_LISTENING = re.compile(rb"Listening on (\S+):(\d+)")
_live_nodes: weakref.WeakSet[AnvilNode] = weakref.WeakSet()


class AnvilNotFoundError(RuntimeError):
    """No anvil executable could be found."""


class AnvilStartError(RuntimeError):
    """anvil exited or did not listen before the start-up deadline."""


def find_anvil() -> str:
    """Locate anvil: ``$ANVIL_BIN``, else the npm package in the project, else PATH.

    Inside ``node_modules`` the platform package's native binary is preferred
    over the ``.bin/anvil`` Node wrapper: it starts faster and is the process
    that actually listens, so signals reach it directly.
    """
    override = os.environ.get("ANVIL_BIN")
    if override:
        if not os.access(override, os.X_OK):
            raise AnvilNotFoundError(f"ANVIL_BIN={override!r} is not an executable file")
        return override
    node_modules = _PROJECT_ROOT / "node_modules"
    for candidate in sorted(node_modules.glob("@foundry-rs/anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    wrapper = node_modules / ".bin" / "anvil"
    if os.access(wrapper, os.X_OK):
        return str(wrapper)
    on_path = shutil.which("anvil")
    if on_path:
        return on_path
    raise AnvilNotFoundError(
        "anvil not found: set ANVIL_BIN, run `npm install` in the project root "
        "(installs @foundry-rs/anvil), or put anvil on PATH"
    )


class _OutputPump:
    """Drains a process's output on a thread; notes the port it listens on."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.port: int | None = None
        self.settled = threading.Event()  # set when listening, or at end of output
        self._tail: collections.deque[bytes] = collections.deque(maxlen=30)
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                if self.port is None:
                    self._tail.append(line)
                    match = _LISTENING.search(line)
                    if match:
                        self.port = int(match.group(2))
                        self.settled.set()
        self.settled.set()

    def tail(self) -> str:
        return b"".join(self._tail).decode(errors="replace").strip()[-2000:]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class AnvilNode:
    """One anvil process; ``url`` and ``port`` are fixed once it has first started."""

    def __init__(
        self,
        chain_id: int = 31337,
        *,
        block_time: float | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
        keep_state: bool = True,
    ) -> None:
        self.chain_id = chain_id
        self.block_time = block_time
        self.host = host
        self._port = port
        self._binary = binary
        self._extra_args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._keep_state = keep_state
        self._state_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: _OutputPump | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("AnvilNode has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the anvil process, or None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def __aenter__(self) -> AnvilNode:
        try:
            await self.start()
        except BaseException:
            await self.close()  # no __aexit__ follows a failed __aenter__
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start anvil (again, on the same port if it ran before) and wait until it answers."""
        if self.running:
            return
        output = self._spawn(self._binary or find_anvil())
        await asyncio.to_thread(output.settled.wait, self._startup_timeout)
        if output.port is None:
            why = "exited" if self._process and self._process.poll() is not None else "hung"
            tail = output.tail()
            await self.stop()
            raise AnvilStartError(f"anvil {why} before listening: {tail}")
        self._port = output.port
        answer = await rpc_call(self.url, "eth_chainId")
        if answer != hex(self.chain_id):
            await self.stop()
            raise AnvilStartError(f"anvil answers chain id {answer}, expected {self.chain_id}")
        _log.info("anvil chain %d listening at %s", self.chain_id, self.url)

    def _spawn(self, binary: str) -> _OutputPump:
        args = [
            binary,
            "--host", self.host,
            "--port", str(self._port or 0),
            "--chain-id", str(self.chain_id),
        ]  # fmt: skip
        if self._keep_state:
            if self._state_dir is None:
                self._state_dir = Path(tempfile.mkdtemp(prefix="anvil-state-"))
            args += ["--state", str(self._state_dir / "state.json")]
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        args += self._extra_args
        self._process = children.popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Out of the terminal's foreground group (Ctrl-C reaches the demo, which
            # stops anvil in order), and a group of its own for stop() to signal.
            start_new_session=True,
        )
        _live_nodes.add(self)
        assert self._process.stdout is not None
        self._output = _OutputPump(self._process.stdout)
        return self._output

    async def stop(self) -> None:
        """Terminate anvil (SIGTERM, then SIGKILL after a grace period); idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, _STOP_GRACE_SECONDS)
        # Always sweep the group: a wrapper may have exited before its child.
        _signal_group(process, signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        if self._output is not None:
            await asyncio.to_thread(self._output.join, _STOP_GRACE_SECONDS)
            self._output = None
        self._process = None
        _live_nodes.discard(self)

    async def close(self) -> None:
        """Stop anvil for good and delete its saved state; idempotent."""
        await self.stop()
        self._drop_state()

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL the process group."""
        if self._process is not None:
            _signal_group(self._process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=_STOP_GRACE_SECONDS)
            self._process = None
        self._drop_state()

    def _drop_state(self) -> None:
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None


class AnvilFactory(Protocol):
    """Makes an unstarted AnvilNode (the type of the tests' ``start_anvil`` fixture)."""

    def __call__(
        self, chain_id: int, *, block_time: float | None = None, keep_state: bool = True
    ) -> AnvilNode: ...


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # start_new_session made the child the leader of a group whose id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@atexit.register
def _kill_leftovers() -> None:
    for node in list(_live_nodes):
        node.kill_now()
