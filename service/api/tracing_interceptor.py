"""Server interceptor: one span per gRPC call, joined to the caller's trace (W3C ``traceparent``).

Written here rather than taken from opentelemetry-instrumentation-grpc: its
grpc.aio server interceptor treats every server-streaming handler as an async
generator, so a handler that streams with ``context.write()`` (the standard
``Health/Watch``) fails under it.  Here each handler kind is wrapped as what it
is, as ``ErrorInterceptor`` does.

Health and reflection calls get no span: load balancers probe health every few
seconds, and a trace per probe would bury the requests.

The parent is the caller's ``traceparent`` metadata; without one, the current
context: the REST span when the shim calls this server's handlers in process.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from opentelemetry.trace import Span, SpanKind, StatusCode

from service import tracing
from service.api.handler_cache import HandlerCache
from service.api.handlers import (
    with_stream_stream_behaviour,
    with_unary_behaviour,
    with_unary_stream_behaviour,
)

__all__ = ["TracingInterceptor"]

_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TracingInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """A SERVER span around each call but health and reflection (only while tracing is on)."""

    def __init__(self) -> None:
        self._traced = HandlerCache(_traced)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not tracing.enabled() or method.startswith(_UNTRACED):
            return handler
        return self._traced.get(method, handler)


def _traced(
    method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with each call inside a span; every kind the server has, as it is."""
    name = method.lstrip("/")
    service, _, rpc = name.partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}

    def start(context: aio.ServicerContext[Any, Any]) -> Any:
        return tracing.tracer().start_as_current_span(
            name,
            context=_parent(context),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,  # an exception's text may quote a URL
            set_status_on_exception=False,
        )

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def traced_unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            with start(context) as span:
                try:
                    response = await unary(request, context)  # type: ignore[arg-type]
                except BaseException as exc:
                    _ended(span, context, exc)
                    raise
                _ended(span, context, None)
                return response

        return with_unary_behaviour(handler, traced_unary)
    if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
        writer = handler.unary_stream  # streams with ``context.write()``

        async def traced_writer(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            with start(context) as span:
                try:
                    await writer(request, context)  # type: ignore[arg-type, misc]
                except BaseException as exc:
                    _ended(span, context, exc)
                    raise
                _ended(span, context, None)

        return with_unary_stream_behaviour(handler, traced_writer)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def traced_stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with start(context) as span:
                try:
                    async for item in stream(request, context):  # type: ignore[arg-type]
                        yield item
                except BaseException as exc:
                    _ended(span, context, exc)
                    raise
                _ended(span, context, None)

        return with_unary_stream_behaviour(handler, traced_stream)
    if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
        bidi = handler.stream_stream

        async def traced_bidi(
            requests: AsyncIterable[Any], context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with start(context) as span:
                try:
                    async for item in bidi(requests, context):  # type: ignore[arg-type]
                        yield item
                except BaseException as exc:
                    _ended(span, context, exc)
                    raise
                _ended(span, context, None)

        return with_stream_stream_behaviour(handler, traced_bidi)
    return handler  # other kinds (the server has none) pass untraced


def _parent(context: aio.ServicerContext[Any, Any]) -> Any:
    """The caller's trace context from the metadata; None: the current one."""
    carrier = {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key in tracing.TRACE_HEADERS and isinstance(value, str)
    }
    return tracing.extract_context(carrier)


def _ended(span: Span, context: aio.ServicerContext[Any, Any], error: BaseException | None) -> None:
    """The call's status code on ``span``: the one set or aborted with, else OK or UNKNOWN."""
    code = context.code()
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(StatusCode.ERROR, code.name)
