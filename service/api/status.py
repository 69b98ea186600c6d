"""The one mapping from the domain's exceptions to gRPC status codes."""

from __future__ import annotations

import grpc

from service.errors import (
    AlreadyExists,
    BalancesError,
    ChainUnavailable,
    InvalidArgument,
    NotFound,
    PriceUnavailable,
    RateLimited,
    Unauthenticated,
)

__all__ = ["status_for"]

_CODES: tuple[tuple[type[BalancesError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ChainUnavailable, grpc.StatusCode.UNAVAILABLE),
    (PriceUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: BalancesError, *, deadline_passed: bool = False) -> grpc.StatusCode:
    """The status code a caller sees for an expected error (its message is returned as is).

    Upstream reads are bounded by the caller's deadline, so a chain that could not
    be read by then is reported as DEADLINE_EXCEEDED, as the caller's own side would
    (whichever of the two statuses arrives first).
    """
    for kind, code in _CODES:
        if isinstance(error, kind):
            if code is grpc.StatusCode.UNAVAILABLE and deadline_passed:
                return grpc.StatusCode.DEADLINE_EXCEEDED
            return code
    return grpc.StatusCode.INTERNAL
