"""Server interceptor: every RPC but health and reflection needs an API key.

The key arrives as ``x-api-key`` metadata (REST: the ``X-API-Key`` header,
forwarded by the gateway).  The tenant it belongs to is put in a context
variable for the servicers; the key itself is never logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service.api.handlers import with_unary_behaviour, with_unary_stream_behaviour
from service.api.tenancy import current_tenant
from service.auth.authenticator import Authenticator

__all__ = ["AuthInterceptor"]

# Infrastructure that load balancers and grpcurl must reach without a key.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _api_key(context: aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-api-key" and isinstance(value, str):
            return value
    return None


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        authenticate = self._authenticator.tenant_of
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                current_tenant.set(await authenticate(_api_key(context)))
                return await unary(request, context)  # type: ignore[arg-type]

            return with_unary_behaviour(handler, unary_guarded)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def stream_guarded(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                current_tenant.set(await authenticate(_api_key(context)))
                async for item in stream(request, context):  # type: ignore[arg-type, attr-defined]
                    yield item

            return with_unary_stream_behaviour(handler, stream_guarded)
        raise RuntimeError(f"{handler_call_details.method}: no authentication for this kind")
