"""The REST shim: an aiohttp app that transcodes HTTP/JSON to gRPC calls on a channel.

Like grpc-gateway's ``RegisterXHandlerFromEndpoint``: every call goes through
a real gRPC channel to the server, so every interceptor (errors, auth, request
IDs) applies to REST traffic exactly as to gRPC traffic.  Beside the server in
one process (``balances serve``), unary calls go to its handlers directly
(``service.gateway.inprocess``), through the same interceptors, with no HTTP/2
or serialisation between: the same answers for a quarter of the CPU.

Server-streaming RPCs are served as grpc-gateway does: newline-delimited JSON,
one ``{"result": <message>}`` line per message; a stream that fails after it
started ends with one ``{"error": {"code", "message", "details"}}`` line, and
one that fails before its first message is an ordinary error response.
Streams have no deadline unless the client sends ``Grpc-Timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf.message import Message
from grpc import aio

from service.gateway.errors import GatewayError, details_from_trailers, error_response
from service.gateway.inprocess import InProcessServer
from service.gateway.jsonview import message_to_dict
from service.gateway.limits import RestLimits
from service.gateway.metadata import grpc_timeout, request_metadata, response_headers
from service.gateway.openapi import openapi_document
from service.gateway.routes import MethodNotAllowed, Route, RouteMatch, RouteTable
from service.gateway.transcode import build_request

__all__ = ["build_gateway_app"]

log = logging.getLogger(__name__)

_JSON = "application/json"
_DISCONNECT_CHECK_SECONDS = 0.5  # how often an idle stream looks for a departed client


def build_gateway_app(
    channel: aio.Channel,
    routes: Sequence[Route],
    limits: RestLimits,
    *,
    title: str,
    in_process: InProcessServer | None = None,
) -> web.Application:
    """The shim; unary calls go to ``in_process`` when given (streams always use ``channel``)."""
    handler = _Handler(channel, RouteTable(routes), limits, title, in_process)
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUESTS)  # once: same instance
    app = web.Application(client_max_size=limits.max_body_bytes)
    # [\s\S]: a decoded path may hold a newline, which "." would not match.
    app.router.add_route("*", r"/{tail:[\s\S]*}", handler.handle)
    return app


class _MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse (bad request line, header bytes, chunk
    sizes) at ERROR with a traceback, then answers 400 itself.  That is the client's
    error, and anyone can send it at will: one DEBUG line instead, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            log.debug("malformed HTTP request answered 400: %s", type(error).__name__)
            return False
        return True


_MALFORMED_REQUESTS = _MalformedRequests()


class _Handler:
    def __init__(
        self,
        channel: aio.Channel,
        table: RouteTable,
        limits: RestLimits,
        title: str,
        in_process: InProcessServer | None,
    ) -> None:
        self._channel = channel
        self._in_process = in_process
        self._table = table
        self._limits = limits
        self._openapi = json.dumps(openapi_document(table.routes, title=title, version="v1"))
        # grpc path -> a unary-unary or unary-stream multicallable, as the RPC is
        self._callables: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == "/openapi.json" and request.method in ("GET", "HEAD"):
            return web.Response(text=self._openapi, content_type=_JSON)
        request_id = ""
        try:
            found = self._table.find(request.method, path)
            if not isinstance(found, RouteMatch):
                return self._no_route(found)
            metadata, request_id = request_metadata(request.headers, request.remote)
            timeout_header = request.headers.get("Grpc-Timeout")
            timeout: float | None = grpc_timeout(
                timeout_header, self._limits.default_timeout_seconds
            )
            if found.route.server_streaming and timeout_header is None:
                timeout = None  # a watch lasts as long as the client wants it
            body = await self._read_body(request) if found.route.body else None
            message = build_request(found, request.rel_url.query.items(), body)
            if found.route.server_streaming:
                return await self._stream(request, found, message, metadata, timeout, request_id)
            assert timeout is not None
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

    def _no_route(self, found: MethodNotAllowed | None) -> web.Response:
        if found is None:
            return error_response(grpc.StatusCode.NOT_FOUND, "Not Found", http_status=404)
        # grpc-gateway answers 501 here; 405 with Allow is what HTTP means.
        return error_response(
            grpc.StatusCode.UNIMPLEMENTED,
            "Method Not Allowed",
            http_status=405,
            headers={"Allow": ", ".join(found.allowed)},
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
        try:
            if self._in_process is not None:
                response, initial, trailing = await self._in_process.unary(
                    route.grpc_path, message, tuple(metadata), timeout
                )
            else:
                call = self._callable(route)(message, metadata=tuple(metadata), timeout=timeout)
                response = await call
                initial = tuple(await call.initial_metadata() or ())
                trailing = tuple(await call.trailing_metadata() or ())
        except aio.AioRpcError as exc:
            return self._rpc_error(exc, request_id)
        headers = response_headers(initial, trailing)
        headers["X-Request-Id"] = request_id
        body: Any = message_to_dict(response)
        if route.response_body:
            field = response.DESCRIPTOR.fields_by_name[route.response_body]
            body = body.get(field.json_name)
        return web.Response(text=json.dumps(body), content_type=_JSON, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        found: RouteMatch,
        message: Message,
        metadata: list[tuple[str, str]],
        timeout: float | None,
        request_id: str,
    ) -> web.StreamResponse:
        route = found.route
        call = self._callable(route)(message, metadata=tuple(metadata), timeout=timeout)
        try:
            messages = call.__aiter__()
            try:
                first = await anext(messages)
            except StopAsyncIteration:
                first = None
            except aio.AioRpcError as exc:
                return self._rpc_error(exc, request_id)
            headers = response_headers(tuple(await call.initial_metadata() or ()))
            headers["X-Request-Id"] = request_id
            response = web.StreamResponse(headers=headers)
            response.content_type = _JSON
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                item = first
                while item is not None:
                    await response.write(_result_line(route, item))
                    item = await _next_while_connected(messages, request)
            except aio.AioRpcError as exc:
                error = {
                    "code": exc.code().value[0],
                    "message": exc.details() or "",
                    "details": details_from_trailers(tuple(exc.trailing_metadata() or ())),
                }
                with contextlib.suppress(ConnectionResetError):
                    await response.write(json.dumps({"error": error}).encode() + b"\n")
            except ConnectionResetError:
                return response  # the client went away: its call is cancelled below
            await response.write_eof()
            return response
        finally:
            call.cancel()  # the client went away, or the stream is over: nothing left to do

    def _rpc_error(self, exc: aio.AioRpcError, request_id: str) -> web.Response:
        trailers = tuple(exc.trailing_metadata() or ())
        initial = tuple(exc.initial_metadata() or ())
        headers = response_headers(initial, trailers)
        headers["X-Request-Id"] = request_id
        message = exc.details() or ""
        if exc.code() == grpc.StatusCode.UNAVAILABLE and not trailers and not initial:
            # The channel's own failure (no server answered): its text names internal
            # addresses ("ipv4:10.0.0.5:50051: Connection refused"), so it stays in the log.
            log.warning("REST [%s]: the gRPC server did not answer: %s", request_id, message)
            message = "the service is unavailable"
        return error_response(
            exc.code(), message, details=details_from_trailers(trailers), headers=headers
        )

    def _callable(self, route: Route) -> Any:
        """The channel's multicallable for the route's RPC, made once per RPC."""
        callable_ = self._callables.get(route.grpc_path)
        if callable_ is None:
            make = (
                self._channel.unary_stream if route.server_streaming else self._channel.unary_unary
            )
            callable_ = make(
                route.grpc_path,
                request_serializer=_serialize,
                response_deserializer=route.response_class.FromString,
            )
            self._callables[route.grpc_path] = callable_
        return callable_


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _next_while_connected(messages: AsyncIterator[Message], request: web.Request) -> Any:
    """The stream's next message (None at its end); ConnectionResetError once the client left.

    A watch may send nothing for a long time: without this, a client that went
    away would only be noticed at the next write.
    """
    pending = asyncio.ensure_future(anext(messages, None))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=_DISCONNECT_CHECK_SECONDS)
            if done:
                return pending.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
    finally:
        if not pending.done():
            pending.cancel()
            # The stream may still end with an error (its deadline) as it is cancelled:
            # retrieve it, or asyncio logs "exception was never retrieved" with a traceback.
            pending.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _result_line(route: Route, message: Message) -> bytes:
    body: Any = message_to_dict(message)
    if route.response_body:
        field = message.DESCRIPTOR.fields_by_name[route.response_body]
        body = body.get(field.json_name)
    return json.dumps({"result": body}).encode() + b"\n"
