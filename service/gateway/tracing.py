"""The REST shim's span: one SERVER span per request, the root of the request's trace.

An aiohttp middleware written here rather than opentelemetry-instrumentation-
aiohttp-server: that one subclasses ``web.Application`` (a DeprecationWarning,
an error under this project's tests) and must be instrumented before the
application exists.  This one is added by ``build_gateway_app`` while tracing
is on, and costs nothing while it is off.

The span is named by the route's template (``GET /v1/wallets/{wallet_id}/balance``),
never by the path, which holds wallet addresses and customer ids; the gRPC call
it makes carries its context as ``traceparent`` metadata (``tracing.inject_metadata``).
A client's own ``traceparent`` header makes the request part of the client's trace.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from service import tracing

__all__ = ["name_route", "tracing_middleware"]


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    method = request.method if request.method.isalpha() else "_OTHER"
    with tracing.tracer().start_as_current_span(
        f"HTTP {method}",
        context=tracing.extract_context(request.headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method},
        record_exception=False,  # an exception's text may quote the path
        set_status_on_exception=False,
    ) as span:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            span.set_attribute("http.response.status_code", exc.status)
            raise
        except BaseException as exc:
            tracing.mark_error(span, exc)
            raise
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(StatusCode.ERROR)
        return response


def name_route(http_method: str, template: str) -> None:
    """Name the current REST span by its route: ``GET /v1/wallets/{wallet_id}/balance``."""
    if not tracing.enabled():
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"{http_method} {template}")
        span.set_attribute("http.route", template)
