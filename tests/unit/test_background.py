"""``BackgroundLoop``: start, wake, interval, failures, and a stop that always stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from service.background import BackgroundLoop

aio = pytest.mark.asyncio(loop_scope="session")


class Steps:
    """A step that counts its runs, can fail once, can block, and can say how long to sleep."""

    def __init__(self, wait: float | None = None) -> None:
        self.runs = 0
        self.wait = wait
        self.fail_next = False
        self.block: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> float | None:
        self.runs += 1
        self.entered.set()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("step broke")
        if self.block is not None:
            try:
                await self.block.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return self.wait


async def until(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll a condition another task changes (it offers no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def loop_tasks(name: str) -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name() == name}


@aio
async def test_start_runs_a_step_at_once_and_is_idempotent() -> None:
    step = Steps()
    loop = BackgroundLoop("t-start", step, interval=60)
    assert not loop.running
    loop.start()
    loop.start()
    await until(lambda: step.runs == 1)
    assert len(loop_tasks("t-start")) == 1 and loop.running
    await asyncio.sleep(0.05)
    assert step.runs == 1  # then it sleeps for the interval
    await loop.aclose()
    await loop.aclose()
    assert not loop.running and not loop_tasks("t-start")


@aio
async def test_wake_runs_the_next_step_now() -> None:
    step = Steps()
    loop = BackgroundLoop("t-wake", step, interval=60)
    loop.start()
    await until(lambda: step.runs == 1)
    loop.wake()
    await until(lambda: step.runs == 2)
    await loop.aclose()


@aio
async def test_a_wake_during_a_step_runs_one_more_step_after_it() -> None:
    step = Steps()
    step.block = asyncio.Event()
    loop = BackgroundLoop("t-wake-during", step, interval=60)
    loop.start()
    await step.entered.wait()
    loop.wake()
    loop.wake()
    step.block.set()
    await until(lambda: step.runs == 2)
    await asyncio.sleep(0.05)
    assert step.runs == 2  # two wakes during one step: one more step, not two
    await loop.aclose()


@aio
async def test_the_interval_or_the_steps_answer_sets_the_pace() -> None:
    by_interval = Steps()
    loop = BackgroundLoop("t-interval", by_interval, interval=0.02)
    loop.start()
    await until(lambda: by_interval.runs >= 4)
    await loop.aclose()

    by_answer = Steps(wait=0.02)
    loop = BackgroundLoop("t-answer", by_answer, interval=60)
    loop.start()
    await until(lambda: by_answer.runs >= 4)
    await loop.aclose()


@aio
async def test_a_failing_step_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="service.background")
    step = Steps()
    step.fail_next = True
    loop = BackgroundLoop("t-fail", step, interval=0.01)
    loop.start()
    await until(lambda: step.runs >= 3)
    await loop.aclose()
    assert "t-fail: step failed; retrying" in caplog.text
    assert "RuntimeError: step broke" in caplog.text


@aio
async def test_aclose_while_sleeping() -> None:
    step = Steps()
    loop = BackgroundLoop("t-close-sleeping", step, interval=60)
    loop.start()
    await until(lambda: step.runs == 1)
    async with asyncio.timeout(1):
        await loop.aclose()
    assert not loop_tasks("t-close-sleeping")


@aio
async def test_aclose_while_stepping_cancels_the_step() -> None:
    step = Steps()
    step.block = asyncio.Event()
    loop = BackgroundLoop("t-close-stepping", step, interval=60)
    loop.start()
    await step.entered.wait()
    async with asyncio.timeout(1):
        await loop.aclose()
    assert step.cancelled and not loop_tasks("t-close-stepping")


@aio
async def test_a_cancel_arriving_with_a_wake_is_not_swallowed() -> None:
    """The race that ``asyncio.wait_for`` loses on 3.11: the wait finishes, then the cancel."""
    step = Steps()
    loop = BackgroundLoop("t-race", step, interval=60)
    loop.start()
    await until(lambda: step.runs == 1)
    await asyncio.sleep(0.01)  # asleep on the wake event
    tasks = loop_tasks("t-race")
    loop.wake()
    closing = asyncio.create_task(loop.aclose())
    done, _ = await asyncio.wait({closing}, timeout=1)
    for task in (*tasks, closing):
        task.cancel()
    assert closing in done, "aclose hung"
    assert all(t.done() for t in tasks)


@aio
async def test_a_caller_cancelled_while_closing_is_still_cancelled() -> None:
    step = Steps()
    step.block = asyncio.Event()
    loop = BackgroundLoop("t-caller", step, interval=60)
    loop.start()
    await step.entered.wait()
    closing = asyncio.create_task(loop.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await until(lambda: not loop_tasks("t-caller"))


def test_a_negative_interval_is_refused() -> None:
    async def step() -> None:
        return None

    with pytest.raises(ValueError, match="interval"):
        BackgroundLoop("t-neg", step, interval=-1)
