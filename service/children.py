"""Child processes that die with their parent, however the parent ends.

Everything the project starts (anvil for the demo and the tests, the tests'
``balances`` and helper processes, later database and cache servers) is started
through here, so none of it can outlive the process that started it.

Why the parent-death signal: a ``finally``, an exit stack or an ``atexit`` hook
runs only when the parent ends in an orderly way.  SIGKILL, an OOM kill, or
Python's default SIGTERM action end it at once and nothing of ours runs; a child
in a session of its own (as anvil is) then hears nothing and is re-parented to
init, where it keeps its port and memory for good.  On Linux
``prctl(PR_SET_PDEATHSIG, sig)`` asks the kernel itself to send ``sig`` to the
child when its parent ends, whatever the reason.  It survives ``execve`` (except
into a set-user-ID or file-capability binary), so it is set just before the
real program is exec'd.

How it is set: by a tiny re-exec wrapper, ``python -I -S -c <_WRAPPER> ...``,
which calls prctl and then ``execv``s the real program in the same process (same
pid, so ``Popen.pid``, signals and process groups are unaffected).  Not
``preexec_fn``: it runs Python between fork and exec, which the subprocess
documentation calls unsafe once the parent has threads (ours always do: output
pumps, the default executor, gRPC) - a lock held by another thread at fork time
deadlocks the child.  Not ``os.posix_spawn``: it has no hook to run prctl.  The
wrapper costs one interpreter start without site packages (about 20 ms).

Caveats:

- The signal fires when the *thread* that forked the child exits, not the
  process.  Start children from the main thread or from a thread that lives as
  long as the child (an event loop's thread is fine; a short-lived
  ``asyncio.to_thread`` worker is not).
- The parent may die between fork and prctl; the signal would then never come.
  The wrapper checks ``os.getppid()`` after prctl and ends itself (with the same
  signal) if its parent is no longer the one that started it.
- Only the direct child is covered: the setting is not inherited across fork.
  A program that forks its own workers must take care of them (anvil is one
  process; the ``node_modules/.bin/anvil`` Node wrapper is not, which is why
  ``find_anvil`` prefers the native binary).
- Elsewhere (macOS, BSD) there is no such signal: the command is started as
  is, and the best that can be done is the parent's own clean-up (``finally``,
  exit stacks) plus the ``atexit`` sweep below, which SIGKILLs every child still
  running (its process group when it leads one) when the interpreter exits
  normally.  A SIGKILLed parent leaves its children there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEATH_SIGNAL", "child_argv", "create_subprocess_exec", "popen"]

# The default: it cannot be caught, ignored or stuck in a slow shutdown.  A server
# with its own fast stop (PostgreSQL's postmaster: SIGQUIT) may be given that instead.
DEATH_SIGNAL = signal.SIGKILL

# argv: -c PARENT_PID SIGNAL PATH ARGV0 ARGS...  Only the standard library, no site.
_WRAPPER = """\
import ctypes, os, sys
parent, sig, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, sig, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit("cannot set the parent-death signal: " + os.strerror(ctypes.get_errno()))
if os.getppid() != parent:  # the parent died before prctl: no signal would come
    os.kill(os.getpid(), sig)
    os._exit(1)
try:
    os.execv(path, sys.argv[4:])
except OSError as exc:
    sys.exit(f"cannot run {path}: {exc.strerror}")
"""

_HAS_PDEATHSIG = sys.platform.startswith("linux")
_children: weakref.WeakSet[subprocess.Popen[bytes] | asyncio.subprocess.Process] = weakref.WeakSet()


def child_argv(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    death_signal: signal.Signals = DEATH_SIGNAL,
) -> list[str]:
    """``argv`` wrapped so the program gets ``death_signal`` when this process ends (Linux).

    The program is looked up now, as ``Popen`` would (a bare name on ``env``'s
    PATH, a relative path from ``cwd``), so a missing one raises
    ``FileNotFoundError`` here rather than failing later in the child.
    Elsewhere ``argv`` is returned unchanged.
    """
    if not argv:
        raise ValueError("empty command")
    if not _HAS_PDEATHSIG:
        return list(argv)
    program = os.fspath(argv[0])
    if os.sep in program:
        path: str | None = os.path.abspath(os.path.join(os.fspath(cwd or "."), program))
    else:
        search = (env if env is not None else os.environ).get("PATH", os.defpath)
        path = shutil.which(program, path=search)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(2, "No such file or directory", program)
    return [
        sys.executable, "-I", "-S", "-c", _WRAPPER,
        str(os.getpid()), str(int(death_signal)), path, *argv,
    ]  # fmt: skip


def popen(
    argv: Sequence[str],
    *,
    death_signal: signal.Signals = DEATH_SIGNAL,
    **options: Any,
) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **options)`` for a child that dies with this process."""
    _check(options)
    command = child_argv(
        argv, env=options.get("env"), cwd=options.get("cwd"), death_signal=death_signal
    )
    process: subprocess.Popen[bytes] = subprocess.Popen(command, **options)  # noqa: S603 - argv, no shell
    _children.add(process)
    return process


async def create_subprocess_exec(
    program: str,
    *args: str,
    death_signal: signal.Signals = DEATH_SIGNAL,
    **options: Any,
) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` for a child that dies with this process."""
    _check(options)
    command = child_argv(
        [program, *args], env=options.get("env"), cwd=options.get("cwd"), death_signal=death_signal
    )
    process = await asyncio.create_subprocess_exec(*command, **options)
    _children.add(process)
    return process


def _check(options: dict[str, Any]) -> None:
    # Both would bypass the wrapper: the program is argv[0], run without a shell.
    for name in ("shell", "executable"):
        if options.get(name):
            raise ValueError(f"{name}= is not supported: pass the program as argv[0]")


@atexit.register
def _kill_leftovers() -> None:
    """Best effort where there is no parent-death signal (and for grandchildren)."""
    for process in list(_children):
        pid = process.pid
        try:
            # Only a child not yet reaped is certainly ours (a reaped pid may be reused).
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                continue
        except ChildProcessError:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:  # it leads its own group: take the group
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
