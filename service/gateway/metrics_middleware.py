"""The REST shim's metrics: requests by route template, HTTP method and status; latency.

The route label is the template (``/v1/wallets/{wallet_id}/balance``), never the
path, which holds wallet addresses and customer ids; a path matching no route is
``unmatched``.  Watch streams are counted when they end, and kept out of the
latency histogram (they last as long as the client wants).

Added by ``build_gateway_app`` while metrics are on (``service.metrics.enable``);
the route is found again here (a few microseconds) so the handler needs no change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from service import metrics
from service.gateway.routes import Route, RouteMatch, RouteTable

__all__ = ["metrics_middleware"]

_UNMATCHED = "unmatched"
_OPENAPI = "/openapi.json"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Series:
    """One route and HTTP method's pre-bound histogram, and its counters by status."""

    __slots__ = ("_by_status", "_method", "_route", "seconds", "streaming")

    def __init__(self, route: str, method: str, streaming: bool) -> None:
        self._route, self._method = route, method
        self.streaming = streaming
        self.seconds = metrics.REST_SECONDS.labels(route, method)
        self._by_status: dict[int, Any] = {}

    def answered(self, status: int) -> None:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = metrics.REST_REQUESTS.labels(
                self._route, self._method, str(status)
            )
        counter.inc()


def metrics_middleware(routes: Iterable[Route]) -> Any:
    """The middleware for an app serving ``routes``."""
    table = RouteTable(routes)
    # Keyed by (template, HTTP method): bounded by the routes, whatever callers send.
    series: dict[tuple[str, str], _Series] = {}

    def series_of(request: web.Request) -> _Series:
        method = request.method if request.method in _METHODS else "_OTHER"
        path = request.rel_url.raw_path
        found = table.find(request.method, path)
        if isinstance(found, RouteMatch):
            route, streaming = found.route.template.source, found.route.server_streaming
        else:
            route, streaming = (_OPENAPI if path == _OPENAPI else _UNMATCHED), False
        key = (route, method)
        found_series = series.get(key)
        if found_series is None:
            found_series = series[key] = _Series(route, method, streaming)
        return found_series

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        measured = series_of(request)
        started = time.perf_counter()
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if not measured.streaming:
                measured.seconds.observe(time.perf_counter() - started)
            measured.answered(status)

    return middleware
