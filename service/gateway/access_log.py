"""The REST shim's access log: one line per HTTP request (``service.request_context``).

The line names the route template (``/v1/wallets/{wallet_id}/balances``), never
the path or its query string: a path holds wallet IDs and addresses, a query
may hold anything a client put there, a key included.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from service.request_context import RequestScope, current_request, log_rest_request

__all__ = ["access_log_middleware", "note_route"]

_CLIENT_CLOSED = 499  # nginx's code for a client that left before the answer


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    scope = RequestScope(None, "rest", http_method=request.method, from_shim=True)
    token = current_request.set(scope)
    http_status = 500
    try:
        response = await handler(request)
        http_status = response.status
        return response
    except web.HTTPException as exc:
        http_status = exc.status
        raise
    except asyncio.CancelledError:
        http_status, scope.status = _CLIENT_CLOSED, "CANCELLED"
        raise
    finally:
        current_request.reset(token)
        log_rest_request(scope, http_status)


def note_route(request_id: str, route_template: str, grpc_method: str) -> None:
    """The matched route of the current REST request (the shim's handler calls this)."""
    scope = current_request.get()
    if scope is not None:
        scope.request_id = request_id
        scope.route = route_template
        scope.method = grpc_method
