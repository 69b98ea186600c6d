"""Keeps secrets (RPC URLs with provider keys, database URLs) out of log lines and messages."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["RedactingFilter", "Redactor", "redact_url"]

# A URL ends before whitespace or quotes, and not on sentence punctuation.
_ANY_URL = re.compile(r"\b(?:https?|wss?|postgres(?:ql)?|rediss?)://[^\s'\"<>]*[^\s'\"<>.,;:!?)\]]")


def redact_url(url: str) -> str:
    """``https://user:key@host:8545/v2/KEY?apikey=K`` -> ``https://host:8545/***``."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


class Redactor:
    """Replaces every known secret in a text with its redacted form."""

    def __init__(self, urls: Iterable[str]) -> None:
        # Longest first, so a URL that extends another is replaced whole.
        self._secrets = sorted({u for u in urls if u}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, redact_url(secret))
        # Then any other URL with a path or query: a library may have rewritten a
        # configured URL (lowercased host, dropped port) so it no longer matches.
        return _ANY_URL.sub(lambda m: redact_url(m.group(0)), text)


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """A handler filter: renders each record's message, traceback, stack and ``extra=``
    fields, then redacts them.

    Exception arguments reach a line only through the rendered message or the
    traceback's text, both redacted here.  An ``extra=`` value that is not a
    plain number or flag is replaced by its redacted text, so a formatter
    (a JSON one, say) cannot write an object whose ``str`` holds a secret.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redactor.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor.redact(record.exc_text)
        record.exc_info = None
        if record.stack_info:
            record.stack_info = self._redactor.redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name in _RECORD_FIELDS or value is None or isinstance(value, bool | int | float):
                continue
            setattr(record, name, self._redactor.redact(str(value)))
        return True
