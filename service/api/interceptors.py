"""Server interceptor: request IDs, and errors turned into status codes in one place.

grpc.aio's default for an unhandled exception is ``UNKNOWN: Unexpected <type>:
<text>``, which would hand a caller whatever the exception said (an RPC URL with
its provider key, say).  Here an expected ``BalancesError`` becomes its mapped
code with its safe message; anything else becomes INTERNAL with only a request
ID, and the full error is logged (through the redacting log filter).

Request bytes that do not decode are the caller's error too.  grpc.aio runs the
handler's ``request_deserializer`` before any behaviour (so before any
interceptor's wrapper could catch it) and answers a failure with ``UNKNOWN:
Unexpected <class 'DecodeError'>`` plus a logged traceback.  So the handler
returned here deserializes with a wrapper that never raises (a failure becomes
the ``_UNDECODABLE`` sentinel), and its behaviour turns the sentinel into
``UndecodableRequest`` (INVALID_ARGUMENT, fixed message) before calling the
inner behaviour: before authentication and before any work.

grpc.aio runs the interceptors on every call: the guarded handler of each
method is built once and kept (``HandlerCache``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service.api.handler_cache import HandlerCache
from service.api.handlers import (
    Deserializer,
    with_stream_stream_behaviour,
    with_unary_behaviour,
    with_unary_stream_behaviour,
)
from service.api.status import Reason, rich_status, transport_status
from service.errors import BalancesError, UndecodableRequest
from service.request_context import VIA_METADATA, RequestScope, begin_call, end_call
from service.request_ids import accept_request_id

__all__ = ["ErrorInterceptor", "request_id_of"]

log = logging.getLogger(__name__)

_UNDECODABLE: Any = object()  # what the tolerant deserializer returns for bytes it cannot decode


def request_id_of(context: aio.ServicerContext[Any, Any]) -> str:
    """The caller's ``x-request-id`` when well-formed, else a new one (``service.request_ids``)."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return accept_request_id(value)
    return accept_request_id(None)


class ErrorInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every unary-unary, unary-stream and async-generator stream-stream handler.

    A stream that fails, before its first message or after some, ends with
    the same status a unary call would get for that error.  Other kinds
    (stream-unary, or stream-stream that is not an async generator: the server
    has none) are passed on as they are.
    """

    def __init__(self) -> None:
        self._guarded = HandlerCache(_guard)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._guarded.get(handler_call_details.method, handler)


def _guard(
    method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its errors turned into statuses, and a tolerant deserializer."""
    deserializer = _tolerant(handler.request_deserializer)
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            request_id, scope = _start(context, method)
            try:
                return await behaviour(_decoded(request), context)  # type: ignore[arg-type]
            except Exception as exc:
                await _abort(exc, context, method, request_id)
            finally:
                _finish(scope, context)

        return with_unary_behaviour(handler, guarded, request_deserializer=deserializer)
    if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
        # A streaming handler that writes with ``context.write`` (health's Watch).
        writer = handler.unary_stream

        async def writer_guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            request_id, scope = _start(context, method)
            try:
                await writer(_decoded(request), context)  # type: ignore[arg-type, misc]
            except Exception as exc:
                await _abort(exc, context, method, request_id)
            finally:
                _finish(scope, context)

        return with_unary_stream_behaviour(
            handler, writer_guarded, request_deserializer=deserializer
        )
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def stream_guarded(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            request_id, scope = _start(context, method)
            try:
                async for item in stream(_decoded(request), context):  # type: ignore[arg-type]
                    yield item
            except Exception as exc:
                await _abort(exc, context, method, request_id)
            finally:
                _finish(scope, context)

        return with_unary_stream_behaviour(
            handler, stream_guarded, request_deserializer=deserializer
        )
    if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
        # Reflection.  Its requests are decoded one by one as it iterates them.
        bidi = handler.stream_stream

        async def bidi_guarded(
            requests: AsyncIterable[Any], context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            request_id, scope = _start(context, method)
            try:
                async for item in bidi(_each_decoded(requests), context):  # type: ignore[arg-type]
                    yield item
            except Exception as exc:
                await _abort(exc, context, method, request_id)
            finally:
                _finish(scope, context)

        return with_stream_stream_behaviour(
            handler, bidi_guarded, request_deserializer=deserializer
        )
    return handler


def _tolerant(deserializer: Deserializer) -> Deserializer:
    """``deserializer``, returning ``_UNDECODABLE`` where it would raise.

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


def _decoded(request: Any) -> Any:
    if request is _UNDECODABLE:
        raise UndecodableRequest()
    return request


async def _each_decoded(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _start(context: aio.ServicerContext[Any, Any], method: str) -> tuple[str, RequestScope]:
    request_id = request_id_of(context)
    context.set_trailing_metadata((("x-request-id", request_id),))
    via = "grpc"
    for key, value in context.invocation_metadata() or ():
        if key == VIA_METADATA and value == "rest":
            via = "rest"  # the REST shim's call over a channel (its own line says so)
    return request_id, begin_call(request_id, method, via)


def _finish(scope: RequestScope, context: aio.ServicerContext[Any, Any]) -> None:
    """The call's access line (``service.request_context``), with the code it ended with."""
    code = context.code()
    if code is None:
        name = "CANCELLED" if context.cancelled() else "OK"
    elif isinstance(code, grpc.StatusCode):
        name = code.name
    else:  # grpc.aio's context may hold the code as its number
        name = next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    end_call(scope, name)


async def _abort(
    exc: Exception, context: aio.ServicerContext[Any, Any], method: str, request_id: str
) -> None:
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
