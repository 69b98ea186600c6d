"""Repeated log lines collapse into a count; different kinds never hold each other back."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from service.log_collapse import CollapsingFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, CollapsingFilter, Clock]]:
    clock = Clock()
    collapse = CollapsingFilter(interval=10.0, burst=2, clock=clock)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(collapse)
    logger = logging.getLogger("tests.collapse")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, stream, collapse, clock
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_flood_of_one_kind_writes_burst_lines_then_one_count_per_interval(
    logged: tuple[logging.Logger, io.StringIO, CollapsingFilter, Clock],
) -> None:
    logger, stream, _collapse, clock = logged

    def fail(attempt: int) -> None:  # one call site, as in a retry loop
        logger.warning("upstream %s failed (attempt %d)", "polygon", attempt)

    for attempt in range(1000):
        fail(attempt)
    assert lines(stream) == [
        "WARNING upstream polygon failed (attempt 0)",
        "WARNING upstream polygon failed (attempt 1)",
    ]
    clock.now = 10.0
    fail(1000)
    assert lines(stream)[-1] == (
        "WARNING upstream polygon failed (attempt 1000) [998 more like this in the last 10s]"
    )


def test_kinds_are_counted_apart(
    logged: tuple[logging.Logger, io.StringIO, CollapsingFilter, Clock],
) -> None:
    logger, stream, _collapse, _clock = logged
    for _ in range(5):
        logger.warning("flood")
    logger.error("a new problem")
    logger.warning("flood")  # same template, other call site: a kind of its own
    assert lines(stream) == [
        "WARNING flood",
        "WARNING flood",
        "ERROR a new problem",
        "WARNING flood",
    ]


def test_counts_never_reported_come_out_as_summaries(
    logged: tuple[logging.Logger, io.StringIO, CollapsingFilter, Clock],
) -> None:
    logger, _stream, collapse, _clock = logged
    for _ in range(7):
        logger.warning("accept failed: %s", "EMFILE")
    summaries = collapse.summaries()
    assert [r.getMessage() for r in summaries] == [
        "5 more lines like 'accept failed: %s' were held back"
    ]
    assert collapse.filter(summaries[0])  # summaries always pass
    assert collapse.summaries() == []


def test_the_number_of_kinds_remembered_is_bounded() -> None:
    clock = Clock()
    collapse = CollapsingFilter(burst=1, max_kinds=3, clock=clock)
    for n in range(10):
        clock.now = float(n)
        record = logging.makeLogRecord({"msg": f"kind {n}", "name": "x", "levelno": 30})
        assert collapse.filter(record)
    assert len(collapse._windows) == 3
