"""The REST shim: an aiohttp app that transcodes HTTP/JSON to gRPC calls on a channel.

Like grpc-gateway's ``RegisterXHandlerFromEndpoint``: every call goes through
a real gRPC channel to the server, so every interceptor (errors, auth, request
IDs) applies to REST traffic exactly as to gRPC traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc import aio

from service.gateway.errors import GatewayError, details_from_trailers, error_response
from service.gateway.metadata import grpc_timeout, request_metadata, response_headers
from service.gateway.openapi import openapi_document
from service.gateway.routes import Route, RouteMatch, RouteTable
from service.gateway.transcode import build_request

__all__ = ["GatewayLimits", "build_gateway_app"]

log = logging.getLogger(__name__)

_JSON = "application/json"


@dataclass(frozen=True)
class GatewayLimits:
    """Bounds that keep one client from holding the gateway."""

    max_body_bytes: int = 1 << 20
    body_read_timeout_seconds: float = 10.0
    default_timeout_seconds: float = 30.0


def build_gateway_app(
    channel: aio.Channel, routes: Sequence[Route], limits: GatewayLimits, *, title: str
) -> web.Application:
    handler = _Handler(channel, RouteTable(routes), limits, title)
    app = web.Application(client_max_size=limits.max_body_bytes)
    # [\s\S]: a decoded path may hold a newline, which "." would not match.
    app.router.add_route("*", r"/{tail:[\s\S]*}", handler.handle)
    return app


class _Handler:
    def __init__(
        self, channel: aio.Channel, table: RouteTable, limits: GatewayLimits, title: str
    ) -> None:
        self._channel = channel
        self._table = table
        self._limits = limits
        self._openapi = json.dumps(openapi_document(table.routes, title=title, version="v1"))
        self._callables: dict[str, aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == "/openapi.json" and request.method in ("GET", "HEAD"):
            return web.Response(text=self._openapi, content_type=_JSON)
        request_id = ""
        try:
            found = self._table.find(request.method, path)
            if isinstance(found, list):
                return self._no_route(found)
            metadata, request_id = request_metadata(request.headers, request.remote)
            timeout = grpc_timeout(
                request.headers.get("Grpc-Timeout"), self._limits.default_timeout_seconds
            )
            body = await self._read_body(request) if found.route.body else None
            message = build_request(found, request.rel_url.query.items(), body)
            return await self._call(found, message, metadata, timeout, request_id)
        except GatewayError as exc:
            headers = {**exc.headers, **({"X-Request-Id": request_id} if request_id else {})}
            return error_response(
                exc.code, exc.message, http_status=exc.http_status, headers=headers
            )
        except Exception:
            # A gateway bug: answer in the API's error shape, never aiohttp's text/plain 500.
            log.exception("REST %s %s failed [%s]", request.method, path[:200], request_id)
            return error_response(
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {request_id or 'none'})",
                headers={"X-Request-Id": request_id} if request_id else None,
            )

    def _no_route(self, allowed: list[str]) -> web.Response:
        if not allowed:
            return error_response(grpc.StatusCode.NOT_FOUND, "Not Found", http_status=404)
        # grpc-gateway answers 501 here; 405 with Allow is what HTTP means.
        return error_response(
            grpc.StatusCode.UNIMPLEMENTED,
            "Method Not Allowed",
            http_status=405,
            headers={"Allow": ", ".join(allowed)},
        )

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(self._limits.body_read_timeout_seconds):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request body is larger than {self._limits.max_body_bytes} bytes",
                http_status=413,
            ) from None
        except TimeoutError:
            raise GatewayError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "request body was not sent in time",
                http_status=408,
            ) from None

    async def _call(
        self,
        found: RouteMatch,
        message: Message,
        metadata: list[tuple[str, str]],
        timeout: float,
        request_id: str,
    ) -> web.Response:
        route = found.route
        call = self._unary(route)(message, metadata=tuple(metadata), timeout=timeout)
        try:
            response = await call
        except aio.AioRpcError as exc:
            trailers = tuple(exc.trailing_metadata() or ())
            headers = response_headers(exc.initial_metadata() or (), trailers)
            headers["X-Request-Id"] = request_id
            return error_response(
                exc.code(),
                exc.details() or "",
                details=details_from_trailers(trailers),
                headers=headers,
            )
        headers = response_headers(
            tuple(await call.initial_metadata() or ()), tuple(await call.trailing_metadata() or ())
        )
        headers["X-Request-Id"] = request_id
        body: Any = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        if route.response_body:
            field = response.DESCRIPTOR.fields_by_name[route.response_body]
            body = body.get(field.json_name)
        return web.Response(text=json.dumps(body), content_type=_JSON, headers=headers)

    def _unary(self, route: Route) -> aio.UnaryUnaryMultiCallable[Any, Any]:
        callable_ = self._callables.get(route.grpc_path)
        if callable_ is None:
            callable_ = self._channel.unary_unary(
                route.grpc_path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=route.response_class.FromString,
            )
            self._callables[route.grpc_path] = callable_
        return callable_
