"""The one request-ID policy, for the gRPC server and the REST gateway alike.

A caller's ID (``x-request-id`` metadata, the ``X-Request-Id`` header) is kept
when it is 1-64 characters of ``A-Z a-z 0-9 . _ : -``; anything else (absent,
too long, spaces, non-ASCII) is replaced by a new random ID.  The gateway
applies it before forwarding, so the ID it returns in ``X-Request-Id`` is the
one the server logs and names in its error messages and trailers.
"""

from __future__ import annotations

import random
import re

__all__ = ["REQUEST_ID_PATTERN", "accept_request_id", "new_request_id"]

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    """32 random hex digits, as many as a UUID4's.  Every call gets one: an ID names a
    request, it guards nothing (callers may choose their own), so no OS randomness."""
    return f"{random.getrandbits(128):032x}"


def accept_request_id(given: str | None) -> str:
    """``given`` when it is a well-formed request ID, else a new one."""
    if given is not None and REQUEST_ID_PATTERN.fullmatch(given):
        return given
    return new_request_id()
