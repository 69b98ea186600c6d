"""The REST shim's bounds on clients: body size and read time, default deadline, connections."""

from __future__ import annotations

from dataclasses import dataclass

from service.checks import check_int_between, normalise, positive_seconds

__all__ = ["MAX_BODY_BYTES", "MAX_CONNECTIONS", "RestLimits"]

MAX_BODY_BYTES = 64 << 20  # the largest max_body_bytes one may configure
MAX_CONNECTIONS = 1_000_000  # the largest connection cap one may configure


@dataclass(frozen=True)
class RestLimits:
    """Bounds that keep one client from holding the gateway (the ``[rest]`` table's limits)."""

    max_body_bytes: int = 1 << 20
    body_read_timeout_seconds: float = 10.0
    default_timeout_seconds: float = 30.0  # for calls that send no Grpc-Timeout
    # From accept (or a kept-alive connection's next first byte) to a complete request head.
    header_timeout_seconds: float = 10.0
    # Between a response and the next request's first byte; longer than the usual proxy
    # idle timeout (60 s), so a proxy in front closes first and never reuses a dead one.
    keepalive_timeout_seconds: float = 75.0
    max_connections: int = 0  # 0: derived from the file-descriptor limit
    max_connections_per_client: int = 0  # 0: derived (an eighth of max_connections)

    def __post_init__(self) -> None:
        check_int_between("max_body_bytes", self.max_body_bytes, 1, MAX_BODY_BYTES)
        for name in ("max_connections", "max_connections_per_client"):
            check_int_between(name, getattr(self, name), 0, MAX_CONNECTIONS)
        for name in (
            "body_read_timeout_seconds",
            "default_timeout_seconds",
            "header_timeout_seconds",
            "keepalive_timeout_seconds",
        ):
            normalise(self, name, positive_seconds(name, getattr(self, name)))
