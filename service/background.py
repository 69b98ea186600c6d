"""``BackgroundLoop``: one task that runs a step, then sleeps until woken or its interval ends.

The one way the service runs background work (block followers, the newHeads
subscription, webhook delivery)::

    loop = BackgroundLoop("follower-polygon", follower.tick, interval=2.0)
    loop.start()      # idempotent
    loop.wake()       # run the next step now instead of at the end of the interval
    await loop.aclose()  # idempotent; returns once the task has ended

The sleep uses ``asyncio.timeout`` around ``Event.wait``, never
``asyncio.wait_for``: on Python 3.11 ``wait_for`` returns the finished wait
when a cancellation arrives just as the event is set, the cancellation is lost
and ``aclose`` waits forever.

A step that raises is logged (with its traceback) and the loop goes on after
the interval.  A step may return the seconds to sleep before the next one
(``None``: the interval), e.g. when it knows when the next piece of work is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["BackgroundLoop", "Step"]

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[float | None]]


class BackgroundLoop:
    """Runs ``step`` again and again in one task until ``aclose``."""

    def __init__(self, name: str, step: Step, interval: float) -> None:
        if interval < 0:
            raise ValueError("interval must not be negative")
        self.name = name
        self._step = step
        self._interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Run the loop in a task (the first step at once); a second call does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Run the next step now; a wake during a step runs one more step right after it."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop the loop (a step in progress is cancelled) and wait until it has ended."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller was cancelled too: pass it on

    async def _run(self) -> None:
        while True:
            # Cleared before the step: a wake that arrives during the step is kept.
            self._wake.clear()
            try:
                wait = await self._step()
            except Exception:
                log.exception("%s: step failed; retrying", self.name)
                wait = None
            # A library may swallow a cancellation (3.11's wait_for): honour it anyway.
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError
            await self._sleep(self._interval if wait is None else wait)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # let others run even when the next step is due at once
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
