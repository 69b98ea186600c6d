"""SIGTERM and SIGINT for the long-running commands (``serve``, ``demo``), from start to exit.

One mechanism, three phases:

- **Before the event loop** (reading the config, imports): a signal raises
  ``StoppedBySignal`` at once.  Nothing has been started yet.
- **Starting** (inside the loop, until the command calls ``serving()``): a signal
  cancels the command's task.  The cancellation unwinds the exit stacks, so what
  was started so far is stopped, in reverse order, and ``run`` raises
  ``StoppedBySignal``; the CLI prints one line and exits ``128 + signal``.
- **Serving**: a signal sets ``stop``, the command's graceful shutdown (health
  NOT_SERVING, drain, close), and the command exits as it normally does.

Later signals while stopping are noted and ignored: the stop under way is
bounded, and cutting it short is how children got orphaned.  The handlers are
Python-level (``signal.signal``), not ``loop.add_signal_handler``, so the same
ones cover the time before the loop exists; inside the loop they only cancel a
task or schedule ``stop.set`` and wake the loop, as ``asyncio.Runner`` does for
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

__all__ = ["StopSignals", "StoppedBySignal"]

T = TypeVar("T")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBySignal(BaseException):  # a way to stop, as KeyboardInterrupt is
    """A stop signal arrived before the command was serving.

    A BaseException, as KeyboardInterrupt is: no ``except Exception`` on the way
    out may swallow it.
    """

    def __init__(self, received: signal.Signals) -> None:
        super().__init__(received.name)
        self.signal = received


class StopSignals:
    """Owns SIGTERM/SIGINT while installed; see the module docstring for the phases."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()  # set by a signal once serving
        self.received: signal.Signals | None = None  # the first stop signal
        self._phase = "before loop"  # -> "starting" -> "serving" -> "done"
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the stop signals in this block; then the old handlers again.

        Only the main thread can: elsewhere (a command run in a worker thread, as
        the tests may) this does nothing, and the signals are not this command's.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self, command: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``asyncio.run(command())``, its task the one a signal during start-up cancels."""
        # From here a signal is only noted until the task exists: raising inside
        # asyncio.run's own set-up would leave a coroutine never awaited.
        self._phase = "starting"
        try:
            return asyncio.run(self._guard(command))
        finally:
            self._phase = "done"

    def serving(self) -> None:
        """Start-up is over: from now on a signal sets ``stop`` (the graceful shutdown)."""
        if self._phase == "starting":
            self._phase = "serving"
            if self.received is not None:
                # A signal came during start-up, yet here we are: a library swallowed
                # the cancellation (3.11's wait_for can).  Stop now, gracefully.
                self.stop.set()

    async def _guard(self, command: Callable[[], Coroutine[Any, Any, T]]) -> T:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            if self.received is not None:  # it came while asyncio.run was setting up
                raise StoppedBySignal(self.received)
            return await command()
        except asyncio.CancelledError:
            if self.received is None:
                raise
            raise StoppedBySignal(self.received) from None
        finally:
            self._task = None
            self._loop = None  # asyncio.run closes it next: nothing more to schedule there

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signal.Signals(signum)
        if self._phase == "before loop":
            if first:
                raise StoppedBySignal(signal.Signals(signum))
            return
        loop, task = self._loop, self._task
        if loop is None or task is None:
            return  # noted: _guard raises on start, or the command is over
        if self._phase == "serving":
            loop.call_soon_threadsafe(self.stop.set)  # again on a second signal: harmless
        elif self._phase == "starting" and first:
            task.cancel()
            loop.call_soon_threadsafe(_wake)  # the selector may be asleep: cancel now


def _wake() -> None:
    """Nothing to do: being scheduled is what wakes the loop."""
