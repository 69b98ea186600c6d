"""``balances serve --workers N``: N server processes sharing the gRPC and REST ports on purpose.

The supervisor (this module, in the ``balances serve`` process) opens no service
of its own.  It holds each listen address with a bound, never listening socket
(``SO_REUSEPORT``), starts N workers through ``service.children`` (they die with
it, however it ends), and each worker runs the ordinary ``serve`` with
``reuse_port`` on the held ports: the kernel spreads new connections over the
workers' listening sockets.  Before holding a port the supervisor binds it once
plainly, so a port that anything else holds (a plain ``balances serve``, another
supervisor) is an error, never shared.

Signals: SIGTERM/SIGINT on the supervisor are forwarded (SIGTERM) to every
worker, which stops gracefully; the supervisor exits once they have.  A worker
that exits on its own is logged and the others are stopped (exit 1): nothing is
restarted behind the operator's back; the process manager above (systemd, the
container runtime) decides.  The first worker starts alone, so one-time start-up
work (schema migrations) never races; the others start together after it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from service import children, metrics
from service.errors import CannotListen, StartupError
from service.settings import Settings

__all__ = ["WorkerSpec", "serve_as_worker", "supervise"]

log = logging.getLogger(__name__)

# On top of the grace period: a worker's own stop (closing stores, flushing logs).
_STOP_MARGIN_SECONDS = 10.0


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells one worker (a hidden ``serve --worker`` option)."""

    index: int  # 1-based
    count: int
    ready_fd: int  # written once the worker serves
    listen: str  # the held gRPC address, with its real port
    rest_listen: str | None

    def dumps(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def loads(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


async def serve_as_worker(settings: Settings, spec: WorkerSpec, *, stop: asyncio.Event,
                          on_ready: Callable[[], None]) -> None:  # fmt: skip
    """The ordinary ``serve`` on the supervisor's ports, shared on purpose."""
    from service.run import serve

    rest = settings.rest
    if rest is not None and spec.rest_listen is not None:
        rest = replace(rest, listen=spec.rest_listen)
    settings = replace(settings, listen=spec.listen, rest=rest)
    log.info("worker %d of %d (pid %d) starting", spec.index, spec.count, os.getpid())

    def ready(_ports: object) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: its death signal follows
            os.write(spec.ready_fd, b"ready\n")
        os.close(spec.ready_fd)
        on_ready()

    await serve(settings, on_ready=ready, stop=stop, reuse_port=True)


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    ready: asyncio.StreamReader


async def supervise(
    settings: Settings,
    count: int,
    config: Path,
    *,
    stop: asyncio.Event,
    on_ready: Callable[[], None],
) -> int:
    """Run ``count`` workers until ``stop`` is set or one of them exits; the exit code."""
    workers: list[_Worker] = []
    async with contextlib.AsyncExitStack() as exits:
        grpc_listen = _hold(exits, settings.listen)
        rest_listen = _hold(exits, settings.rest.listen) if settings.rest is not None else None
        metrics_dir = await _serve_metrics(exits, settings.metrics_listen)
        # Registered before the first start: a failed or interrupted start stops what started.
        exits.push_async_callback(_stop_all, workers, settings.grace_period_seconds)
        # The first alone (one-time start-up work such as migrations), then the rest together.
        for batch in ([1], range(2, count + 1)):
            started = [
                await _start(
                    WorkerSpec(i, count, -1, grpc_listen, rest_listen), config, metrics_dir
                )
                for i in batch
            ]
            workers.extend(started)
            await asyncio.gather(*(_until_ready(w) for w in started))
        log.info(
            "%d workers serving gRPC on port %s%s (pids %s)",
            count,
            grpc_listen.rpartition(":")[2],
            f", REST on port {rest_listen.rpartition(':')[2]}" if rest_listen else "",
            " ".join(str(w.process.pid) for w in workers),
        )
        on_ready()
        exited = {asyncio.create_task(w.process.wait()): w for w in workers}
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *exited}, return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            log.info("stopping: SIGTERM to %d workers", len(workers))
            codes = await _stop_all(workers, settings.grace_period_seconds)
            return 0 if all(code == 0 for code in codes) else 1
        stopping.cancel()
        for task in done:
            worker = exited[task]
            log.error(
                "worker %d (pid %d) exited with code %s: stopping the others (no restart)",
                worker.index,
                worker.process.pid,
                worker.process.returncode,
            )
        return 1
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises


async def _serve_metrics(exits: contextlib.AsyncExitStack, listen: str | None) -> Path | None:
    """With ``[metrics] listen``: the workers' metrics directory (prometheus_client's
    multiprocess mode), removed after they stop, and its sum served on ``listen``."""
    if listen is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="balances-metrics-"))
    exits.callback(shutil.rmtree, directory, True)  # registered first: runs last
    registry = metrics.supervisor_registry(directory)
    await exits.enter_async_context(metrics.serve_metrics(listen, registry))
    return directory


async def _start(spec: WorkerSpec, config: Path, metrics_dir: Path | None = None) -> _Worker:
    read_end, write_end = os.pipe()
    # Each worker writes its metrics to the supervisor's directory (read at its first import).
    env = None
    if metrics_dir is not None:
        env = {**os.environ, metrics.MULTIPROC_ENV_VAR: str(metrics_dir)}
    try:
        process = await children.create_subprocess_exec(
            sys.executable, "-m", "service.cli", "serve", "--config", str(config),
            "--worker", replace(spec, ready_fd=write_end).dumps(),
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(write_end,),
            env=env,
        )  # fmt: skip
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # the worker's copy is the only one: its exit is our EOF
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
    )
    return _Worker(spec.index, process, reader)


async def _until_ready(worker: _Worker) -> None:
    if await worker.ready.readline() != b"ready\n":
        code = await worker.process.wait()
        raise StartupError(f"worker {worker.index} exited with code {code} before serving")


async def _stop_all(workers: list[_Worker], grace_period: float) -> list[int]:
    """SIGTERM every running worker, wait for all (SIGKILL past the grace period); codes."""
    for worker in workers:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
    codes = []
    for worker in workers:
        try:
            codes.append(
                await asyncio.wait_for(worker.process.wait(), grace_period + _STOP_MARGIN_SECONDS)
            )
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop: killed", worker.index, worker.process.pid)
            worker.process.kill()
            codes.append(await worker.process.wait())
    return codes


def _hold(exits: contextlib.AsyncExitStack, listen: str) -> str:
    """Reserve ``listen`` for the workers; the address with its real port (0 picks one).

    ``CannotListen`` when anything else holds the port: first a plain bind (as a
    server binds, ``SO_REUSEADDR`` only) proves it free, then a bound, never listening
    ``SO_REUSEPORT`` socket keeps it ours.  It takes no connections (only listening
    sockets do), and it has no ``SO_REUSEADDR``, so another supervisor's plain bind
    fails on it too.
    """
    host, _, port_text = listen.rpartition(":")
    bare = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bare, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotListen(listen, exc.strerror or "unknown host") from exc
    if int(port_text) != 0:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _bind(probe, address, listen)
    held = socket.socket(family, kind, proto)
    exits.callback(held.close)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as grpc binds [::]
    _bind(held, address, listen)
    port = held.getsockname()[1]
    return f"{host}:{port}"


def _bind(sock: socket.socket, address: tuple[object, ...], listen: str) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE or not exc.strerror
        raise CannotListen(listen, *(() if in_use else (exc.strerror,))) from exc
