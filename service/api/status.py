"""The one mapping from the domain's exceptions to gRPC status codes."""

from __future__ import annotations

import grpc

from service.errors import (
    BalancesError,
    ChainUnavailable,
    InvalidArgument,
    NotFound,
    PriceUnavailable,
)

__all__ = ["status_for"]

_CODES: tuple[tuple[type[BalancesError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ChainUnavailable, grpc.StatusCode.UNAVAILABLE),
    (PriceUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: BalancesError) -> grpc.StatusCode:
    """The status code a caller sees for an expected error (its message is returned as is)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL
