"""Repeated log lines collapse: a hostile client or a dead provider cannot fill a disk.

A flood is many records of one *kind*: one logger, level and call site with
one message template (``"upstream %s failed: %s"``), whatever its arguments.
Each kind may write ``burst`` lines per ``interval`` seconds; the rest are
counted, and the next line of that kind written says how many were held back
(``[47 more like this in the last 10s]``).  Counts still pending at exit are
written by the handler as it closes (``summaries``).  Different kinds never
hold each other back, so a new problem is always seen at once.

A record may name its own kind (``_collapse_kind``: the access lines of
``service.request_context`` use their method and status) or pass unconditionally
(``_collapse_exempt``); leading underscores keep both out of JSON lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CollapsingFilter"]

Kind = tuple[str, int, str, int, str]
_SUMMARY = "_collapse_summary"  # marks flush's own records, which always pass
_EXEMPT = "_collapse_exempt"
_KIND = "_collapse_kind"


@dataclass
class _Window:
    started: float
    written: int = 0
    held: int = 0


class CollapsingFilter(logging.Filter):
    """A handler filter: at most ``burst`` lines per kind per ``interval``, then a count."""

    def __init__(
        self,
        *,
        interval: float = 10.0,
        burst: int = 3,
        max_kinds: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if interval <= 0 or burst < 1 or max_kinds < 1:
            raise ValueError("interval must be positive; burst and max_kinds at least 1")
        self._interval = interval
        self._burst = burst
        self._max_kinds = max_kinds
        self._clock = clock
        self._windows: dict[Kind, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False) or getattr(record, _EXEMPT, False):
            return True
        template = getattr(record, _KIND, None) or str(record.msg)
        kind = (record.name, record.levelno, record.pathname, record.lineno, template)
        now = self._clock()
        window = self._windows.get(kind)
        held_before = 0
        if window is None or now - window.started >= self._interval:
            held_before = window.held if window is not None else 0
            if window is None and len(self._windows) >= self._max_kinds:
                self._forget_oldest()
            window = self._windows[kind] = _Window(now)
        if window.written >= self._burst:
            window.held += 1
            return False
        window.written += 1
        if held_before:
            record.msg = f"{record.getMessage()} [{held_before} more like this in the last "
            record.msg += f"{self._interval:g}s]"
            record.args = None
        return True

    def summaries(self) -> list[logging.LogRecord]:
        """One record per kind whose held-back lines were never reported (then forgotten).

        For a handler closing at exit; these records always pass this filter.
        """
        records = []
        for (name, level, _path, _line, template), window in sorted(self._windows.items()):
            if window.held:
                record = logging.makeLogRecord(
                    {
                        "name": name,
                        "levelno": level,
                        "levelname": logging.getLevelName(level),
                        "msg": "%d more lines like %r were held back",
                        "args": (window.held, template),
                        _SUMMARY: True,
                    }
                )
                records.append(record)
        self._windows.clear()
        return records

    def _forget_oldest(self) -> None:
        # Unbounded kinds would be a memory leak; the oldest window has the least to say.
        oldest = min(self._windows, key=lambda k: self._windows[k].started)
        del self._windows[oldest]
