"""Errors turned into status codes in one place, and request bytes that do not decode.

grpc.aio's default for an unhandled exception is ``UNKNOWN: Unexpected <type>:
<text>``, which would hand a caller whatever the exception said (an RPC URL with
its provider key, say).  Here an expected ``BalancesError`` becomes its mapped
code with its safe message; anything else becomes INTERNAL with only a request
ID, and the full error is logged (through the redacting log filter).

Request bytes that do not decode are the caller's error too.  grpc.aio runs the
handler's ``request_deserializer`` before any behaviour (so before any
interceptor's wrapper could catch it) and answers a failure with ``UNKNOWN:
Unexpected <class 'DecodeError'>`` plus a logged traceback.  So the server's
interceptor (``service.api.interceptors``) gives each handler a deserializer
that never raises (``tolerant``: a failure becomes a sentinel), and its wrapper
turns the sentinel into ``UndecodableRequest`` (``decoded``: INVALID_ARGUMENT,
fixed message) before anything else: before authentication and before any work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, NoReturn

import grpc
from grpc import aio

from service.api.handlers import Deserializer
from service.api.status import Reason, rich_status, transport_status
from service.errors import BalancesError, UndecodableRequest

__all__ = ["abort_for", "decoded", "each_decoded", "tolerant"]

log = logging.getLogger("service.api.interceptors")  # the name these lines always had

_UNDECODABLE: Any = object()  # what the tolerant deserializer returns for bytes it cannot decode


def tolerant(deserializer: Deserializer) -> Deserializer:
    """``deserializer``, returning a sentinel where it would raise (``decoded`` raises).

    Any exception counts (DecodeError, and whatever else a parser raises on
    hostile bytes): the deserializer sees nothing but the caller's bytes.
    None stays None: grpc then passes raw bytes, which cannot fail to decode.
    """
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception:
            return _UNDECODABLE

    return deserialize


def decoded(request: Any) -> Any:
    """``request``, or ``UndecodableRequest`` when its bytes did not decode."""
    if request is _UNDECODABLE:
        raise UndecodableRequest()
    return request


async def each_decoded(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield decoded(request)


async def abort_for(
    exc: Exception, context: aio.ServicerContext[Any, Any], method: str, request_id: str
) -> NoReturn:
    """End the call with the status for ``exc`` (AbortError: already ended, passed on)."""
    if isinstance(exc, aio.AbortError):
        raise exc
    if isinstance(exc, BalancesError):
        # Undecodable bytes are refused before authentication: anyone can send them at
        # will, so they log at DEBUG, not one INFO line per request.
        level = logging.DEBUG if isinstance(exc, UndecodableRequest) else logging.INFO
        log.log(level, "%s [%s] %s: %s", method, request_id, type(exc).__name__, exc)
        remaining = context.time_remaining()
        # Reads stop at the caller's deadline, a hair before grpc notices it: within this
        # margin the deadline is what ended the read.
        status = rich_status(exc, deadline_passed=remaining is not None and remaining <= 0.05)
        await context.abort(
            status.code, status.message, (("x-request-id", request_id), status.trailer())
        )
    if isinstance(exc, NotImplementedError) and context.code() == grpc.StatusCode.UNIMPLEMENTED:
        # A generated servicer base's method nobody overrode (health's List, say): it
        # sets UNIMPLEMENTED, then raises.  Not a bug of ours, and not INTERNAL; as health
        # needs no key, DEBUG.
        log.debug("%s [%s] is not implemented", method, request_id)
        status = transport_status(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
        await context.abort(
            status.code, status.message, (("x-request-id", request_id), status.trailer())
        )
    log.exception("%s [%s] failed unexpectedly", method, request_id, exc_info=exc)
    status = transport_status(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id})",
        reason=Reason.INTERNAL,
        metadata={"requestId": request_id},
    )
    await context.abort(
        status.code, status.message, (("x-request-id", request_id), status.trailer())
    )
    raise AssertionError("abort returned")  # pragma: no cover
