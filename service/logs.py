"""Process-wide logging set-up: one handler; floods collapsed, every record redacted.

Two formats on stderr: ``text`` (``time LEVEL logger: message``) and ``json``,
one object per line (python-json-logger): ``time``, ``level``, ``logger``,
``pid``, ``message``, a traceback as ``exc_info``, every ``extra=`` field, and,
on a line logged while serving a request, that request's ``request_id``,
``tenant`` and ``method`` (``service.request_context``).  Redaction runs on the
record before either formatter sees it, so it covers every field of a line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from pythonjsonlogger.json import JsonFormatter

from service.log_collapse import CollapsingFilter
from service.redact import RedactingFilter, Redactor
from service.request_context import ACCESS_LOGGER, current_request

__all__ = ["LOG_FORMATS", "setup_logging"]

LOG_FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FIELDS = {"levelname": "level", "name": "logger", "process": "pid"}


class _RequestFields(logging.Filter):
    """Adds the current request's ID, tenant and method to a record that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = current_request.get()
        if scope is not None and not hasattr(record, "request_id"):
            for name, value in scope.fields().items():
                setattr(record, name, value)
        return True


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, through the collapse and redaction filters; held-back counts written on close."""

    def __init__(self, secret_urls: Iterable[str], log_format: str) -> None:
        super().__init__()
        if log_format == "json":
            self.setFormatter(
                JsonFormatter(
                    " ".join(f"%({name})s" for name in (*_JSON_FIELDS, "message")),
                    rename_fields=_JSON_FIELDS,
                    timestamp="time",  # ISO 8601, UTC
                )
            )
        else:
            self.setFormatter(logging.Formatter(_TEXT))
        # Collapse first: a held-back record costs no formatting and no redaction.
        self._collapse = CollapsingFilter()
        self.addFilter(self._collapse)
        if log_format == "json":
            self.addFilter(_RequestFields())
        # Last: whatever a filter above added is redacted too.
        self.addFilter(RedactingFilter(Redactor(secret_urls)))

    def close(self) -> None:
        # logging.shutdown (at exit) and basicConfig(force=True) close handlers.
        for record in self._collapse.summaries():
            self.handle(record)
        super().close()


def setup_logging(
    secret_urls: Iterable[str] = (),
    level: str | None = None,
    *,
    log_format: str = "text",
    access_log: bool = False,
) -> None:
    """``log_format``: ``text`` or ``json``; ``access_log``: one line per finished request."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}")
    logging.basicConfig(
        level=level or os.environ.get("BALANCES_LOG_LEVEL", "INFO"),
        handlers=[_ServiceHandler(secret_urls, log_format)],
        force=True,
    )
    # Access lines are INFO: off, nothing below WARNING passes (none is logged there).
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET if access_log else logging.WARNING)
