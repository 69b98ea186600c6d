"""A deterministic clock for store tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class StepClock:
    """A clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now
