"""Process-wide logging set-up: one handler, every record redacted before it is written."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from service.redact import RedactingFilter, Redactor

__all__ = ["setup_logging"]


def setup_logging(secret_urls: Iterable[str] = (), level: str | None = None) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(Redactor(secret_urls)))
    logging.basicConfig(
        level=level or os.environ.get("BALANCES_LOG_LEVEL", "INFO"), handlers=[handler], force=True
    )
    # web3 logs every request URL at DEBUG; the filter redacts it, but it is noise too.
    logging.getLogger("web3").setLevel(logging.WARNING)
