"""``kill -9`` during a large ``balances wallets import``: the file is either fully in or not at all.

Real processes of the console script, killed with SIGKILL at several moments:
at fixed times (start-up, reading the file) and, to be sure one lands *inside*
the import transaction, when the database's write-ahead log has grown past a
threshold (the transaction spills its pages there long before it commits).
After each kill the database is opened as a restarted service would open it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service import children
from service.store.sqlite.migrations import migrate
from tests.support.cli import BALANCES, OFFLINE_CONFIG

pytestmark = pytest.mark.integration

WALLETS = 20_000
# The import transaction writes several MB to the WAL before it commits (about
# 350 bytes a wallet); opening and migrating the database writes about 40 kB.
WAL_THRESHOLDS = (1 << 20, 3 << 20)
KILL_TIMES = (0.05, 0.2, 0.5, 0.9)
DEADLINE_SECONDS = 60


def write_import_file(path: Path, count: int) -> None:
    """``count`` wallets with deterministic, distinct addresses over 200 customers."""
    lines = ["customer_id,network,address"]
    for index in range(count):
        address = hashlib.sha256(f"wallet-{index}".encode()).hexdigest()[:40]
        network = "polygon" if index % 2 else "ethereum"
        lines.append(f"cus_{index % 200},{network},0x{address}")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Trial:
    """One import process in its own directory, and when to kill it."""

    name: str
    workdir: Path
    should_kill: Callable[[Trial, float], bool]
    process: subprocess.Popen[bytes] | None = None
    killed_running: bool = False
    wal_at_kill: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.workdir / "wallets.sqlite3"

    def wal_size(self) -> int:
        try:
            return (self.workdir / "wallets.sqlite3-wal").stat().st_size
        except FileNotFoundError:
            return 0


def start_import(workdir: Path, import_file: Path) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if k != "BALANCES_CONFIG"}
    return children.popen(
        [str(BALANCES), "wallets", "import", str(import_file), "--config", "balances.toml"],
        cwd=workdir,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def count_after_restart(database: Path) -> int:
    """Open the database as the service does at start (recovery, migrations), count wallets."""
    with closing(sqlite3.connect(database, isolation_level=None)) as connection:
        migrate(connection)
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count: int = connection.execute("SELECT COUNT(*) FROM wallets").fetchone()[0]
    return count


def after_seconds(delay: float) -> Callable[[Trial, float], bool]:
    return lambda _trial, elapsed: elapsed >= delay


def when_wal_exceeds(size: int) -> Callable[[Trial, float], bool]:
    return lambda trial, _elapsed: trial.wal_size() >= size


def test_kill_9_during_import_leaves_all_or_nothing(tmp_path: Path) -> None:
    import_file = tmp_path / "wallets.csv"
    write_import_file(import_file, WALLETS)
    trials = [
        Trial(f"after {delay}s", tmp_path / f"time-{delay}", after_seconds(delay))
        for delay in KILL_TIMES
    ] + [
        Trial(f"WAL past {size} bytes", tmp_path / f"wal-{size}", when_wal_exceeds(size))
        for size in WAL_THRESHOLDS
    ]
    for trial in trials:
        trial.workdir.mkdir()
        (trial.workdir / "balances.toml").write_text(OFFLINE_CONFIG)

    # Start them all, then kill each at its moment (polling every millisecond).
    started = time.monotonic()
    for trial in trials:
        trial.process = start_import(trial.workdir, import_file)
    pending = list(trials)
    try:
        while pending:
            elapsed = time.monotonic() - started
            assert elapsed < DEADLINE_SECONDS, [t.name for t in pending]
            for trial in list(pending):
                assert trial.process is not None
                if trial.process.poll() is not None:
                    trial.notes.append(f"exited by itself with {trial.process.returncode}")
                    pending.remove(trial)
                elif trial.should_kill(trial, elapsed):
                    trial.wal_at_kill = trial.wal_size()
                    trial.process.send_signal(signal.SIGKILL)
                    trial.process.wait()
                    # -SIGKILL only if our signal ended it, i.e. it was still running.
                    trial.killed_running = trial.process.returncode == -signal.SIGKILL
                    pending.remove(trial)
            time.sleep(0.001)
    finally:
        for trial in trials:
            if trial.process is not None and trial.process.poll() is None:
                trial.process.kill()
                trial.process.wait()

    counts = {trial.name: count_after_restart(trial.database) for trial in trials}
    report = {t.name: (counts[t.name], t.killed_running, t.wal_at_kill, t.notes) for t in trials}
    # Never a partial import.
    assert all(count in (0, WALLETS) for count in counts.values()), report
    # At least one kill landed inside the import transaction: the process was
    # running, its transaction had already written megabytes to the WAL, and
    # after the restart none of it is there.
    assert any(
        t.killed_running and t.wal_at_kill >= min(WAL_THRESHOLDS) and counts[t.name] == 0
        for t in trials
    ), report
    # The early kills really were kills of a running process.
    assert all(t.killed_running for t in trials if t.name == f"after {KILL_TIMES[0]}s"), report

    # After a crash, importing the file again works, completely: checked after
    # the kills inside the transaction and the last timed one (two cores run
    # these; one import each keeps the test short).
    again = [t for t in trials if t.wal_at_kill >= min(WAL_THRESHOLDS)] + [
        t for t in trials if t.name == f"after {KILL_TIMES[-1]}s"
    ]
    retries = [(trial, start_import(trial.workdir, import_file)) for trial in again]
    for trial, process in retries:
        assert process.wait(timeout=DEADLINE_SECONDS) == 0, trial.name
    for trial in again:
        assert count_after_restart(trial.database) == WALLETS, trial.name
