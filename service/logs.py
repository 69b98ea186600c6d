"""Process-wide logging set-up: one handler; floods collapsed, every record redacted."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from service.log_collapse import CollapsingFilter
from service.redact import RedactingFilter, Redactor

__all__ = ["setup_logging"]


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, through the collapse and redaction filters; held-back counts written on close."""

    def __init__(self, secret_urls: Iterable[str]) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # Collapse first: a held-back record costs no formatting and no redaction.
        self._collapse = CollapsingFilter()
        self.addFilter(self._collapse)
        self.addFilter(RedactingFilter(Redactor(secret_urls)))

    def close(self) -> None:
        # logging.shutdown (at exit) and basicConfig(force=True) close handlers.
        for record in self._collapse.summaries():
            self.handle(record)
        super().close()


def setup_logging(secret_urls: Iterable[str] = (), level: str | None = None) -> None:
    logging.basicConfig(
        level=level or os.environ.get("BALANCES_LOG_LEVEL", "INFO"),
        handlers=[_ServiceHandler(secret_urls)],
        force=True,
    )
