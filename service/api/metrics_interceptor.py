"""Server interceptor: gRPC calls counted and timed, and each tenant's calls and refusals.

py-grpc-prometheus refuses grpc.aio servers ("Interceptor must be
ServerInterceptor") and grpcio-observability pins an older grpcio, so this is
the small interceptor they would be.  It is the outermost one: authentication
failures and refusals are counted with their codes, and the time includes them.

Calls from this process's REST shim (the in-process path runs the server's
interceptors, and its watch streams come over the private Unix socket) are
counted once, as REST (``service.gateway.metrics_middleware``), not here: the
``balances_grpc_*`` series are the gRPC clients' calls.  The tenant series count
both, since the tenant is known only here (``current_tenant``, set inside by the
auth interceptor in this same task).

Labels are pre-bound per method when its wrapper is built (once per method,
``HandlerCache``); per call there is no label lookup beyond the status code's.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service import metrics
from service.api.handler_cache import HandlerCache
from service.api.handlers import with_unary_behaviour, with_unary_stream_behaviour
from service.api.tenancy import current_tenant

__all__ = ["MetricsInterceptor"]

_OK = grpc.StatusCode.OK
_LIMITED = grpc.StatusCode.RESOURCE_EXHAUSTED
# Peers of the REST shim in this process: its direct path, and its private socket.
_IN_PROCESS = "in-process"
_UNIX = "unix:"


class _Tenant:
    __slots__ = ("limited", "requests")

    def __init__(self, tenant: str) -> None:
        self.requests = metrics.TENANT_REQUESTS.labels(tenant)
        self.limited = metrics.TENANT_RATE_LIMITED.labels(tenant)


_tenants: dict[str, _Tenant] = {}  # bounded by the tenants the operator created


def _count_tenant(code: grpc.StatusCode) -> None:
    tenant = current_tenant.get(None)
    if tenant is None:  # not authenticated (open services, or refused before)
        return
    counted = _tenants.get(tenant)
    if counted is None:
        counted = _tenants[tenant] = _Tenant(tenant)
    counted.requests.inc()
    if code is _LIMITED:
        counted.limited.inc()


def _code_of(context: aio.ServicerContext[Any, Any], error: BaseException) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN  # an error past the error interceptor: grpc.aio's answer


def _from_rest_shim(context: aio.ServicerContext[Any, Any]) -> bool:
    peer = context.peer() or ""
    return peer == _IN_PROCESS or peer.startswith(_UNIX)


class _Method:
    """One method's pre-bound series."""

    def __init__(self, method: str) -> None:
        service, _, name = method.lstrip("/").partition("/")
        self._service, self._name = service, name
        self.in_flight = metrics.GRPC_IN_FLIGHT.labels(service, name)
        self.seconds = metrics.GRPC_SECONDS.labels(service, name)
        self._by_code: dict[grpc.StatusCode, Any] = {}

    def finished(self, code: grpc.StatusCode) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = metrics.GRPC_REQUESTS.labels(
                self._service, self._name, code.name
            )
        counter.inc()


class MetricsInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self._measured = HandlerCache(_measure)

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
        return self._measured.get(handler_call_details.method, handler)


def _measure(
    method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    series = _Method(method)
    clock = time.perf_counter
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_measured(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            grpc_client = not _from_rest_shim(context)  # a REST call counts as REST only
            if grpc_client:
                series.in_flight.inc()
            started = clock()
            code = _OK
            try:
                return await unary(request, context)  # type: ignore[arg-type]
            except BaseException as error:
                code = _code_of(context, error)
                raise
            finally:
                if grpc_client:
                    series.seconds.observe(clock() - started)
                    series.in_flight.dec()
                    series.finished(code)
                _count_tenant(code)

        return with_unary_behaviour(handler, unary_measured)
    # Only async-generator streams: a handler that streams with ``context.write()`` (the
    # standard Health/Watch) would break behind a generator wrapper.
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        stream = handler.unary_stream

        async def stream_measured(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            grpc_client = not _from_rest_shim(context)
            if grpc_client:
                series.in_flight.inc()
            code = _OK
            try:
                async for item in stream(request, context):  # type: ignore[arg-type]
                    yield item
            except BaseException as error:
                code = _code_of(context, error)
                raise
            finally:
                if grpc_client:
                    series.in_flight.dec()
                    series.finished(code)
                _count_tenant(code)

        return with_unary_stream_behaviour(handler, stream_measured)
    return handler
