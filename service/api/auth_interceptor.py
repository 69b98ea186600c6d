"""Server interceptor: every RPC but health and reflection needs an API key, within its limits.

The key arrives as ``x-api-key`` metadata (REST: the ``X-API-Key`` header,
forwarded by the gateway).  The tenant it belongs to is put in a context
variable for the servicers; the key itself is never logged.

Right after authentication the call is admitted by its key's quotas
(``service.quotas``): unary calls take a rate-limit token and an in-flight
place, watch streams a token and a stream place, given back when the call
ends however it ends.  A call over a limit may wait a moment for room; a
refusal is ``RESOURCE_EXHAUSTED`` with ``google.rpc.ErrorInfo`` (``RATE_LIMITED``)
and ``google.rpc.RetryInfo`` in the status details.

grpc.aio asks the interceptors for a handler on every call: the guarded handler
of each method is built once and kept (``HandlerCache``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn

import grpc
from grpc import aio

from service.api.handler_cache import HandlerCache
from service.api.handlers import with_unary_behaviour, with_unary_stream_behaviour
from service.api.status import rich_status
from service.api.tenancy import current_tenant
from service.auth.authenticator import Authenticator
from service.errors import RateLimited
from service.quotas import CallKind, CallQuotas
from service.request_context import note_tenant

__all__ = ["AuthInterceptor"]

# Infrastructure that load balancers and grpcurl must reach without a key.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _api_key(context: aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-api-key" and isinstance(value, str):
            return value
    return None


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, authenticator: Authenticator, quotas: CallQuotas) -> None:
        self._authenticator = authenticator
        self._quotas = quotas
        self._guarded = HandlerCache(self._guard)

    async def _admission(
        self, context: aio.ServicerContext[Any, Any], kind: CallKind
    ) -> AbstractAsyncContextManager[None]:
        """Authenticate (the tenant is set for the servicers) and ask the key's quotas."""
        tenant, key_id = await self._authenticator.authenticate(_api_key(context))
        current_tenant.set(tenant)
        note_tenant(tenant)  # for the call's log lines
        return self._quotas.admit(tenant, key_id, kind, time_left=context.time_remaining())

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
        """``handler`` behind authentication and quotas (open services as they are)."""
        if method.startswith(OPEN_SERVICES):
            return handler
        admission = self._admission
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                admitted = await admission(context, CallKind.UNARY)
                try:
                    async with admitted:
                        return await unary(request, context)  # type: ignore[arg-type]
                except RateLimited as refused:
                    await _refuse(context, refused)

            return with_unary_behaviour(handler, unary_guarded)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def stream_guarded(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                admitted = await admission(context, CallKind.STREAM)
                try:
                    async with admitted:
                        async for item in stream(request, context):  # type: ignore[arg-type, attr-defined]
                            yield item
                except RateLimited as refused:
                    await _refuse(context, refused)

            return with_unary_stream_behaviour(handler, stream_guarded)
        raise RuntimeError(f"{method}: no authentication for this kind")


async def _refuse(context: aio.ServicerContext[Any, Any], refused: RateLimited) -> NoReturn:
    """End the call as the error interceptor would, plus the RetryInfo trailer.

    Aborting here (not raising to the error interceptor) also keeps refusals out
    of the log: a client in a retry loop must not be able to flood it.
    """
    status = rich_status(refused)
    trailers = (*(context.trailing_metadata() or ()), status.trailer())
    await context.abort(status.code, status.message, trailers)
    raise AssertionError("abort returned")  # pragma: no cover
