"""Throwaway PostgreSQL and Redis servers on free loopback ports, for the replica tests.

Both run in the foreground as children of the test process (``service.children``),
so they die with the run however it ends.  ``initdb`` and ``postgres`` refuse to
run as root: when the tests run as root the server runs as the ``postgres``
user, in a directory made under ``/tmp`` and handed to that user (pytest's
``tmp_path`` sits in a 0700 directory that user cannot enter).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service import children

__all__ = [
    "PostgresServer",
    "RedisServer",
    "free_port",
    "postgres_binaries",
    "postgres_server",
    "redis_server",
]

_START_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres`` (Debian's layout first), or None."""
    for found in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (found / "initdb").exists() and (found / "postgres").exists():
            return found
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass(frozen=True)
class PostgresServer:
    """A running server; ``url(database)`` names a database on it (user ``postgres``, trust)."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its URL."""
        if not name.isidentifier():
            raise ValueError(f"not a plain database name: {name!r}")
        self._psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def _psql(self, sql: str) -> None:
        bindir = postgres_binaries()
        psql = str(bindir / "psql") if bindir and (bindir / "psql").exists() else "psql"
        subprocess.run(
            [psql, "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(), "-c", sql],
            check=True,
            capture_output=True,
            timeout=_START_TIMEOUT,
        )


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL (fsync off, loopback only); stop and delete it after."""
    bindir = postgres_binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="balances-pg-", dir="/tmp"))
    as_root = os.geteuid() == 0
    user = pwd.getpwnam("postgres") if as_root else None
    try:
        if user is not None:
            os.chown(directory, user.pw_uid, user.pw_gid)
        as_postgres = _as_user(user)
        subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(directory / "data"), "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8", "--locale", "C"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        port = free_port()
        log = open(directory / "server.log", "wb")  # noqa: SIM115 - closed below
        process = children.popen(
            [*as_postgres, str(bindir / "postgres"), "-D", str(directory / "data"), "-p", str(port),
             "-k", str(directory), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            _wait_for_port(port, process, directory / "server.log")
            server = PostgresServer(port, directory, process)
            _wait_until_accepting(server)  # the port opens before start-up recovery ends
            yield server
        finally:
            process.terminate()  # SIGTERM: "smart" shutdown; then fast
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a throwaway Redis (no persistence, loopback only); stop it after."""
    program = shutil.which("redis-server")
    if program is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    process = children.popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port, process, None)
        yield RedisServer(port, process)
    finally:
        process.kill()
        process.wait()


def _as_user(user: pwd.struct_passwd | None) -> list[str]:
    """A command prefix that runs as ``user``; setpriv sets the parent-death signal again
    after changing identity, which clears it (and execs, so the parent stays ours)."""
    if user is None:
        return []
    return [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
        f"--pdeathsig={signal.Signals(children.DEATH_SIGNAL).name}",
    ]  # fmt: skip


def _wait_until_accepting(server: PostgresServer) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            server._psql("SELECT 1")
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise
            time.sleep(0.05)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path | None) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(
                f"server exited with {process.returncode} before answering\n{detail}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not answer on port {port} within {_START_TIMEOUT} s")
