"""Server interceptor: request IDs, and errors turned into status codes in one place.

grpc.aio's default for an unhandled exception is ``UNKNOWN: Unexpected <type>:
<text>``, which would hand a caller whatever the exception said (an RPC URL with
its provider key, say).  Here an expected ``BalancesError`` becomes its mapped
code with its safe message; anything else becomes INTERNAL with only a request
ID, and the full error is logged (through the redacting log filter).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service.api.handlers import with_unary_behaviour, with_unary_stream_behaviour
from service.api.status import status_for
from service.errors import BalancesError
from service.request_ids import accept_request_id

__all__ = ["ErrorInterceptor", "request_id_of"]

log = logging.getLogger(__name__)


def request_id_of(context: aio.ServicerContext[Any, Any]) -> str:
    """The caller's ``x-request-id`` when well-formed, else a new one (``service.request_ids``)."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return accept_request_id(value)
    return accept_request_id(None)


class ErrorInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every unary-unary and unary-stream handler.

    A stream that fails, before its first message or after some, ends with
    the same status a unary call would get for that error.
    """

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
        method = handler_call_details.method
        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                request_id = _start(context)
                try:
                    return await behaviour(request, context)  # type: ignore[arg-type]
                except Exception as exc:
                    await _abort(exc, context, method, request_id)

            return with_unary_behaviour(handler, guarded)
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(
            handler.unary_stream
        ):
            # A streaming handler that writes with ``context.write`` (health's Watch).
            writer = handler.unary_stream

            async def writer_guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
                request_id = _start(context)
                try:
                    await writer(request, context)  # type: ignore[arg-type, misc]
                except Exception as exc:
                    await _abort(exc, context, method, request_id)

            return with_unary_stream_behaviour(handler, writer_guarded)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def stream_guarded(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                request_id = _start(context)
                try:
                    async for item in stream(request, context):  # type: ignore[arg-type]
                        yield item
                except Exception as exc:
                    await _abort(exc, context, method, request_id)

            return with_unary_stream_behaviour(handler, stream_guarded)
        return handler


def _start(context: aio.ServicerContext[Any, Any]) -> str:
    request_id = request_id_of(context)
    context.set_trailing_metadata((("x-request-id", request_id),))
    return request_id


async def _abort(
    exc: Exception, context: aio.ServicerContext[Any, Any], method: str, request_id: str
) -> None:
    """End the call with the status for ``exc`` (AbortError: already ended, passed on)."""
    if isinstance(exc, aio.AbortError):
        raise exc
    if isinstance(exc, BalancesError):
        log.info("%s [%s] %s: %s", method, request_id, type(exc).__name__, exc)
        remaining = context.time_remaining()
        code = status_for(exc, deadline_passed=remaining is not None and remaining <= 0)
        await context.abort(code, str(exc), (("x-request-id", request_id),))
    log.exception("%s [%s] failed unexpectedly", method, request_id, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id})",
        (("x-request-id", request_id),),
    )
