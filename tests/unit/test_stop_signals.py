"""StopSignals: one handler for SIGTERM/SIGINT through a command's three phases.

Real signals, sent to this process: each test installs the handlers first, and
they are restored afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from contextlib import AsyncExitStack

import pytest

from service.stop_signals import StoppedBySignal, StopSignals


def _deliver() -> None:
    """Give the interpreter bytecodes on which to run a pending Python-level handler."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_signal_before_the_loop_raises_at_once_and_the_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signals = StopSignals()
    with pytest.raises(StoppedBySignal) as stopped, signals.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        _deliver()
    assert stopped.value.signal is signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_during_start_up_stops_what_was_started_in_reverse_order() -> None:
    signals = StopSignals()
    stopped: list[str] = []

    async def command() -> int:
        async with AsyncExitStack() as exits:
            exits.callback(stopped.append, "chain")
            exits.callback(stopped.append, "receiver")
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(5)  # still starting: this is cancelled
            stopped.append("slept through the signal")
        return 0

    with signals.installed(), pytest.raises(StoppedBySignal) as caught:
        signals.run(command)
    assert caught.value.signal is signal.SIGINT
    assert stopped == ["receiver", "chain"]


def test_a_second_signal_does_not_cut_the_start_up_stop_short() -> None:
    signals = StopSignals()
    stopped: list[str] = []

    async def slow_stop() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # impatient: again, while stopping
        await asyncio.sleep(0.2)
        stopped.append("chain")

    async def command() -> int:
        async with AsyncExitStack() as exits:
            exits.push_async_callback(slow_stop)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(30)
        return 0

    with signals.installed(), pytest.raises(StoppedBySignal):
        signals.run(command)
    assert stopped == ["chain"]


def test_once_serving_a_signal_sets_stop_and_the_command_ends_normally() -> None:
    signals = StopSignals()

    async def command() -> int:
        signals.serving()
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(20):
            await signals.stop.wait()
        os.kill(os.getpid(), signal.SIGINT)  # while draining: still only stop.set
        await asyncio.sleep(0.05)
        return 7

    with signals.installed():
        assert signals.run(command) == 7
    assert signals.received is signal.SIGTERM


def test_a_start_up_whose_cancellation_was_swallowed_stops_once_serving() -> None:
    """A library may lose a cancellation (3.11's ``wait_for``): the command must not
    then serve on as if no signal had come."""
    signals = StopSignals()

    async def command() -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        with contextlib.suppress(asyncio.CancelledError):  # as a buggy library would
            await asyncio.sleep(5)
        signals.serving()
        async with asyncio.timeout(5):
            await signals.stop.wait()
        return "stopped gracefully"

    with signals.installed():
        assert signals.run(command) == "stopped gracefully"


def test_without_a_signal_the_command_returns_and_its_errors_pass_through() -> None:
    signals = StopSignals()

    async def failing() -> int:
        raise ValueError("broken")

    with signals.installed():
        assert signals.run(lambda: asyncio.sleep(0, result=3)) == 3
    with StopSignals().installed() as again, pytest.raises(ValueError, match="broken"):
        again.run(failing)


def test_off_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def in_thread() -> None:
        with StopSignals().installed():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [before]
