"""OpenTelemetry traces: off unless ``[tracing]`` turns them on; one trace per request.

A REST request (``service.gateway.tracing``), its gRPC call
(``service.api.tracing_interceptor``) and the upstream JSON-RPC calls it causes
(``upstream_span``, in the chain adapter) are spans of one trace: W3C
``traceparent`` goes from the REST shim to the server in the call's metadata,
whether the call crosses a channel (the sidecar) or not (in process).

Off (the default), nothing is installed: no interceptor, no middleware, and
``upstream_span`` is a shared no-op.  Spans never carry a URL, a key or a wallet
address: the REST span names the route template, never the path, and errors
are recorded by their type only (their texts may quote a URL).

The tracer is this module's, not OpenTelemetry's global one, so a test can
give it an in-memory exporter (``use_provider``) and a process can stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, MutableSequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "TRACE_HEADERS",
    "enabled",
    "extract_context",
    "inject_metadata",
    "mark_error",
    "start_tracing",
    "stop_tracing",
    "tracer",
    "upstream_span",
    "use_provider",
]

TRACE_HEADERS = ("traceparent", "tracestate")  # W3C Trace Context, as gRPC metadata keys too
_INSTRUMENTATION = "balances"
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer | None = None  # None: tracing is off
_NO_SPAN = contextlib.nullcontext()
_NO_TRACER = trace.NoOpTracer()


def enabled() -> bool:
    return _tracer is not None


def tracer() -> Tracer:
    """The tracer of this process; a no-op one once tracing stopped (calls still draining)."""
    return _NO_TRACER if _tracer is None else _tracer


def use_provider(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (``None``: tracing off).  Tests give theirs."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(_INSTRUMENTATION)


def start_tracing(*, service_name: str, otlp_endpoint: str, sample_ratio: float) -> TracerProvider:
    """Export spans to ``otlp_endpoint`` (OTLP over HTTP, protobuf) in batches, from now on.

    ``sample_ratio`` of the traces that start here are kept; a caller's sampled
    ``traceparent`` decides for the traces it started.  The batches are sent from
    the SDK's own thread, never from the event loop.
    """
    # The SDK and the exporter load only when tracing is on.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    attributes = {"service.name": service_name}
    with contextlib.suppress(PackageNotFoundError):
        attributes["service.version"] = version("balances-service")
    provider = TracerProvider(
        resource=Resource.create(attributes),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    use_provider(provider)
    return provider


async def stop_tracing(provider: TracerProvider) -> None:
    """Stop tracing and send the spans still queued (the exporter's timeout bounds it)."""
    use_provider(None)
    await asyncio.to_thread(provider.shutdown)  # blocking HTTP: off the event loop


def extract_context(carrier: Mapping[str, str]) -> Context | None:
    """The caller's trace context from ``traceparent``/``tracestate``; None when it sent none.

    ``carrier``'s keys must be lower case (gRPC metadata) or case-insensitive (HTTP headers).
    """
    if carrier.get("traceparent") is None:
        return None
    return _PROPAGATOR.extract(carrier)


def inject_metadata(
    metadata: MutableSequence[tuple[str, str]], incoming: Mapping[str, str]
) -> None:
    """Append ``traceparent`` (and ``tracestate``) to gRPC metadata: the current span's.

    Not tracing here (a sidecar with tracing off), the caller's own ``incoming``
    headers are passed on when well-formed, so the server still joins the caller's trace.
    """
    carrier: dict[str, str] = {}
    if _tracer is not None:
        _PROPAGATOR.inject(carrier)
    elif incoming.get("traceparent") is not None:
        _PROPAGATOR.inject(carrier, context=_PROPAGATOR.extract(incoming))
    metadata.extend((key, value) for key, value in carrier.items() if key in TRACE_HEADERS)


def mark_error(span: Span, error: BaseException) -> None:
    """``span`` failed with ``error``: its type only (a text may quote a URL or a key)."""
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.set_attribute("error.type", type(error).__name__)


def upstream_span(
    network: str, method: str, provider: int, batch_size: int | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A span around one JSON-RPC request to the provider at 1-based ``provider``.

    A batch (``batch_size`` calls) is one span: ``method`` is its calls' method, or "mixed".

    Only inside a traced request: the block followers' and probes' own reads,
    with no request around them, start no trace of their own.
    """
    if _tracer is None or not trace.get_current_span().get_span_context().is_valid:
        return _NO_SPAN
    attributes: dict[str, str | int] = {
        "rpc.system": "jsonrpc",
        "rpc.method": method,
        "balances.network": network,
        "balances.provider": provider,
    }
    if batch_size is not None:
        attributes["balances.batch_size"] = batch_size
    name = f"upstream {method}" if batch_size is None else "upstream batch"
    return _upstream(_tracer, name, attributes)


@contextlib.contextmanager
def _upstream(tracer: Tracer, name: str, attributes: dict[str, str | int]) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            mark_error(span, exc)
            raise
