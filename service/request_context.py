"""The request being served, for its log lines: ID, tenant, method, and how it ended.

One ``RequestScope`` per request, in a context variable.  The gRPC server's
interceptor opens one per call; the REST shim's access-log middleware one per
HTTP request.  Every line logged while a scope is open carries its request ID,
tenant and method (JSON logs, ``service.logs``); when it closes, one *access
line* says how the request ended: status (the gRPC code's name), duration.

One request, one access line.  A REST request dispatched in process runs the
gRPC interceptors inside the REST request's scope (same request ID): they fill
in its method, tenant and code and write no line of their own.  A call that
reaches the gRPC server over a channel from the shim (REST watches; the sidecar)
is a gRPC call of its own: its line says ``via=rest``, with the same request ID
as the shim's line.

Access lines are off by default (``[logging] access_log = true`` turns them on,
at INFO): a line per request is the volume the log-collapse filter exists to
prevent.  When on, the line of an authenticated call that succeeded is never
collapsed (each is bounded by its tenant's rate limit and names a request
someone may look for); the others (errors, a bad key, health checks, an unknown
route) collapse like any flood, per method, status and tenant
(``service.log_collapse``), so a dead provider or a hostile client still writes
a few lines, not one per request.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACCESS_LOGGER",
    "VIA_METADATA",
    "RequestScope",
    "begin_call",
    "current_request",
    "end_call",
    "log_rest_request",
    "note_status",
]

ACCESS_LOGGER = "balances.access"
# Metadata the REST shim adds to the calls it makes: the gRPC side's line says via=rest.
VIA_METADATA = "x-balances-via"
# Record attributes for service.log_collapse (a leading "_" keeps them out of JSON lines).
COLLAPSE_EXEMPT = "_collapse_exempt"
COLLAPSE_KIND = "_collapse_kind"

access_log = logging.getLogger(ACCESS_LOGGER)


@dataclass(slots=True)
class RequestScope:
    """One request: what its log lines say about it."""

    request_id: str | None
    via: str  # "grpc" or "rest": where the request came in
    method: str | None = None  # the gRPC method, "/balances.v1.BalancesService/GetBalance"
    tenant: str | None = None  # once authenticated (``service.api.admission`` sets it)
    status: str | None = None  # the gRPC code's name, once known
    route: str | None = None  # REST: the route template, never the path or query
    http_method: str | None = None  # REST
    from_shim: bool = False  # the REST shim's scope: the shim writes its access line
    started: float = field(default_factory=time.perf_counter)
    token: Token[RequestScope | None] | None = None

    def fields(self) -> dict[str, Any]:
        """What every line logged in this scope carries."""
        return {"request_id": self.request_id, "tenant": self.tenant, "method": self.method}


current_request: ContextVar[RequestScope | None] = ContextVar("current_request", default=None)


def note_status(code_name: str) -> None:
    """How the current request ended, as a gRPC code's name (``NOT_FOUND``)."""
    scope = current_request.get()
    if scope is not None:
        scope.status = code_name


def begin_call(request_id: str, method: str, via: str) -> RequestScope:
    """The scope of a gRPC call: the REST request's it runs in (in-process), else its own."""
    outer = current_request.get()
    if outer is not None and outer.from_shim and outer.request_id == request_id:
        outer.method = method  # a REST request dispatched in process: one line, the shim's
        return outer
    scope = RequestScope(request_id, via, method)
    scope.token = current_request.set(scope)
    return scope


def end_call(scope: RequestScope, code_name: str) -> None:
    """Record how a gRPC call ended; its own scope writes the access line and closes."""
    scope.status = code_name
    if scope.from_shim:
        return  # a REST request's scope: the shim writes the line
    token, scope.token = scope.token, None
    if token is not None:
        try:  # noqa: SIM105 (contextlib.suppress: one more object per call)
            current_request.reset(token)
        except ValueError:
            pass  # a stream's generator may be closed from another context: nothing to undo
    if access_log.isEnabledFor(logging.INFO):
        _access_line(scope, f"grpc {scope.method} {code_name}", {"via": scope.via})


def log_rest_request(scope: RequestScope, http_status: int) -> None:
    """The REST shim's access line for one finished HTTP request."""
    if scope.status is None:
        scope.status = _ROUTER_CODES.get(http_status, "OK" if http_status < 400 else None)
    if access_log.isEnabledFor(logging.INFO):
        where = scope.route or "(no route)"
        _access_line(
            scope,
            f"rest {scope.http_method} {where} {http_status} {scope.status}",
            {
                "via": "rest",
                "http_method": scope.http_method,
                "route": scope.route,
                "http_status": http_status,
            },
        )


# The shim's router answers these itself, before any gRPC call.
_ROUTER_CODES = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}


def _access_line(scope: RequestScope, what: str, extra: dict[str, Any]) -> None:
    duration_ms = round((time.perf_counter() - scope.started) * 1000, 3)
    fields = {
        **scope.fields(),
        "status": scope.status,
        "duration_ms": duration_ms,
        **extra,
        # Authenticated calls are bounded by their rate limits: every success is written.
        COLLAPSE_EXEMPT: scope.tenant is not None and scope.status == "OK",
        COLLAPSE_KIND: f"{what} {scope.tenant}",
    }
    access_log.info(
        "%s %.1fms [%s] tenant=%s",
        what,
        duration_ms,
        scope.request_id,
        scope.tenant or "-",
        extra=fields,
    )
