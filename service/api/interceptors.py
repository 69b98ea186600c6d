"""Server interceptor: request IDs, and errors turned into status codes in one place.

grpc.aio's default for an unhandled exception is ``UNKNOWN: Unexpected <type>:
<text>``, which would hand a caller whatever the exception said (an RPC URL with
its provider key, say).  Here an expected ``BalancesError`` becomes its mapped
code with its safe message; anything else becomes INTERNAL with only a request
ID, and the full error is logged (through the redacting log filter).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service.api.status import status_for
from service.errors import BalancesError

__all__ = ["ErrorInterceptor", "request_id_of"]

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_of(context: aio.ServicerContext[Any, Any]) -> str:
    """The caller's ``x-request-id`` when well-formed, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


class ErrorInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every unary-unary handler; streaming handlers pass through untouched."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            request_id = request_id_of(context)
            context.set_trailing_metadata((("x-request-id", request_id),))
            try:
                return await behaviour(request, context)  # type: ignore[arg-type]
            except BalancesError as exc:
                log.info("%s [%s] %s: %s", method, request_id, type(exc).__name__, exc)
                remaining = context.time_remaining()
                code = status_for(exc, deadline_passed=remaining is not None and remaining <= 0)
                await context.abort(code, str(exc), (("x-request-id", request_id),))
            except aio.AbortError:
                raise
            except Exception:
                log.exception("%s [%s] failed unexpectedly", method, request_id)
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error (request id {request_id})",
                    (("x-request-id", request_id),),
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
