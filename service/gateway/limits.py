"""The REST shim's bounds on one client: body size, body read time and default deadline."""

from __future__ import annotations

from dataclasses import dataclass

from service.checks import check_int_between, normalise, positive_seconds

__all__ = ["MAX_BODY_BYTES", "RestLimits"]

MAX_BODY_BYTES = 64 << 20  # the largest max_body_bytes one may configure


@dataclass(frozen=True)
class RestLimits:
    """Bounds that keep one client from holding the gateway (the ``[rest]`` table's limits)."""

    max_body_bytes: int = 1 << 20
    body_read_timeout_seconds: float = 10.0
    default_timeout_seconds: float = 30.0  # for calls that send no Grpc-Timeout

    def __post_init__(self) -> None:
        check_int_between("max_body_bytes", self.max_body_bytes, 1, MAX_BODY_BYTES)
        for name in ("body_read_timeout_seconds", "default_timeout_seconds"):
            normalise(self, name, positive_seconds(name, getattr(self, name)))
