"""The server's interceptor: one wrapper per method doing every per-call concern in one place.

For each call, in this order: the invocation metadata is read once (API key,
request ID, ``via``); the request ID goes in the trailers and the request's
log scope opens (``service.request_context``); undecodable request bytes are
refused (``service.api.error_mapping``); the caller is authenticated and
admitted by its key's quotas (``service.api.admission``; not for health and
reflection); the servicer runs; an error becomes its status
(``service.api.error_mapping``); the scope closes with the code the call ended
with.  Each concern keeps its own module; this one only orders them.  One
interceptor, not one per concern: grpc.aio runs every interceptor's
``intercept_service`` on every call, and each wrapper level is one more
coroutine or generator per call.

A stream that fails, before its first message or after some, ends with the
same status a unary call would get for that error.  Kinds other than
unary-unary, unary-stream and async-generator stream-stream (the server has
none) are passed on as they are.  The wrapper of each method is built once
and kept (``HandlerCache``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service.api.admission import Admission, needs_key, refuse
from service.api.error_mapping import abort_for, decoded, each_decoded, tolerant
from service.api.handler_cache import HandlerCache
from service.api.handlers import (
    with_stream_stream_behaviour,
    with_unary_behaviour,
    with_unary_stream_behaviour,
)
from service.auth.authenticator import Authenticator
from service.errors import RateLimited
from service.quotas import CallKind, CallQuotas
from service.request_context import VIA_METADATA, RequestScope, begin_call, end_call
from service.request_ids import accept_request_id

__all__ = ["ApiInterceptor"]

UNARY, STREAM = CallKind.UNARY, CallKind.STREAM


class ApiInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request IDs and log scope, error mapping, authentication and quotas, for every call."""

    def __init__(self, authenticator: Authenticator, quotas: CallQuotas) -> None:
        self._admission = Admission(authenticator, quotas)
        self._guarded = HandlerCache(self._guard)

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
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` behind every per-call concern (open services: no key asked)."""
        admit = self._admission.admit if needs_key(method) else None
        deserializer = tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                api_key, request_id, scope = _start(context, method)
                try:
                    request = decoded(request)
                    if admit is None:
                        return await behaviour(request, context)  # type: ignore[arg-type]
                    admitted = await admit(api_key, context, UNARY, scope)
                    try:
                        async with admitted:
                            return await behaviour(request, context)  # type: ignore[arg-type]
                    except RateLimited as refused:
                        await refuse(context, refused)
                except Exception as exc:
                    await abort_for(exc, context, method, request_id)
                finally:
                    _finish(scope, context)

            return with_unary_behaviour(handler, guarded, request_deserializer=deserializer)
        writes = not inspect.isasyncgenfunction(handler.unary_stream)
        if handler.unary_stream is not None and writes:
            # A streaming handler that writes with ``context.write`` (health's Watch).
            if admit is not None:
                raise RuntimeError(f"{method}: no authentication for this kind")
            writer = handler.unary_stream

            async def writer_guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
                _, request_id, scope = _start(context, method)
                try:
                    await writer(decoded(request), context)  # type: ignore[arg-type, misc]
                except Exception as exc:
                    await abort_for(exc, context, method, request_id)
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
                api_key, request_id, scope = _start(context, method)
                try:
                    request = decoded(request)
                    if admit is None:
                        async for item in stream(request, context):  # type: ignore[arg-type, attr-defined]
                            yield item
                        return
                    admitted = await admit(api_key, context, STREAM, scope)
                    try:
                        async with admitted:
                            async for item in stream(request, context):  # type: ignore[arg-type, attr-defined]
                                yield item
                    except RateLimited as refused:
                        await refuse(context, refused)
                except Exception as exc:
                    await abort_for(exc, context, method, request_id)
                finally:
                    _finish(scope, context)

            return with_unary_stream_behaviour(
                handler, stream_guarded, request_deserializer=deserializer
            )
        if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
            # Reflection.  Its requests are decoded one by one as it iterates them.
            if admit is not None:
                raise RuntimeError(f"{method}: no authentication for this kind")
            bidi = handler.stream_stream

            async def bidi_guarded(
                requests: AsyncIterable[Any], context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                _, request_id, scope = _start(context, method)
                try:
                    async for item in bidi(each_decoded(requests), context):  # type: ignore[arg-type]
                        yield item
                except Exception as exc:
                    await abort_for(exc, context, method, request_id)
                finally:
                    _finish(scope, context)

            return with_stream_stream_behaviour(
                handler, bidi_guarded, request_deserializer=deserializer
            )
        if admit is not None:
            raise RuntimeError(f"{method}: no authentication for this kind")
        return handler


def _start(
    context: aio.ServicerContext[Any, Any], method: str
) -> tuple[str | None, str, RequestScope]:
    """The call's API key, request ID (sent back in the trailers) and log scope.

    One pass over the metadata.  The first ``x-api-key`` and the first
    ``x-request-id`` count (a malformed ID is replaced: ``service.request_ids``).
    """
    api_key = given_id = None
    via = "grpc"
    for key, value in context.invocation_metadata() or ():
        if key == "x-api-key":
            if api_key is None and isinstance(value, str):
                api_key = value
        elif key == "x-request-id":
            if given_id is None and isinstance(value, str):
                given_id = value
        elif key == VIA_METADATA and value == "rest":
            via = "rest"  # the REST shim's call over a channel (its own line says so)
    request_id = accept_request_id(given_id)
    context.set_trailing_metadata((("x-request-id", request_id),))
    return api_key, request_id, begin_call(request_id, method, via)


# grpc.aio's context may hold the code as its number.
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _finish(scope: RequestScope, context: aio.ServicerContext[Any, Any]) -> None:
    """The call's access line (``service.request_context``), with the code it ended with."""
    code = context.code()
    if code is None:
        name = "CANCELLED" if context.cancelled() else "OK"
    elif isinstance(code, grpc.StatusCode):
        name = code.name
    else:
        name = _CODE_NAMES.get(code, str(code))
    end_call(scope, name)
