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
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf.message import Message
from grpc import aio

from service import metrics, tracing
from service.api.status import Reason
from service.gateway.access_log import access_log_middleware, note_route
from service.gateway.errors import (
    GatewayError,
    details_from_trailers,
    error_response,
    rpc_error_details,
)
from service.gateway.inprocess import InProcessServer
from service.gateway.jsonview import message_to_dict
from service.gateway.limits import RestLimits
from service.gateway.metadata import (
    Metadata,
    grpc_timeout,
    request_metadata,
    response_headers,
    trailer_headers,
)
from service.gateway.metrics_middleware import metrics_middleware
from service.gateway.openapi import openapi_document
from service.gateway.routes import MethodNotAllowed, Route, RouteMatch, RouteTable
from service.gateway.tracing import name_route, tracing_middleware
from service.gateway.transcode import build_request, parse_query
from service.request_context import VIA_METADATA, note_status

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
    if tracing.enabled():  # [tracing]: a span per request, the root of its trace
        app.middlewares.append(tracing_middleware)
    if metrics.enabled():  # [metrics]: requests by route template, method and status
        app.middlewares.append(metrics_middleware(routes))
    app.middlewares.append(access_log_middleware)  # one log line per request
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
        # Bytes, not text: aiohttp would add "; charset=utf-8" to the content type.
        self._openapi = json.dumps(
            openapi_document(table.routes, title=title, version="v1")
        ).encode()
        # grpc path -> a unary-unary or unary-stream multicallable, as the RPC is
        self._callables: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == "/openapi.json" and request.method in ("GET", "HEAD"):
            return web.Response(body=self._openapi, content_type=_JSON)
        request_id = ""
        try:
            raw_path, raw_query = _request_target(request)
            found, form = await self._route(request, _decoded_path(raw_path), raw_query)
            if not isinstance(found, RouteMatch):
                return self._no_route(found)
            name_route(found.route.http_method, found.route.template.source)
            metadata, request_id = request_metadata(request.headers, request.remote)
            note_route(request_id, found.route.template.source, found.route.grpc_path)
            metadata.append((VIA_METADATA, "rest"))  # the gRPC side's log line says via=rest
            tracing.inject_metadata(metadata, request.headers)  # the gRPC call joins the trace
            timeout_header = request.headers.get("Grpc-Timeout")
            timeout: float | None = grpc_timeout(
                timeout_header, self._limits.default_timeout_seconds
            )
            if found.route.server_streaming:
                # A watch lasts as long as the client wants it, unless it says otherwise.
                timeout = grpc_timeout(timeout_header, 0.0) or None
            body = None
            if found.route.body and form is None:  # a form POST's body was its query
                body = await self._read_body(request)
            query: list[tuple[str, str]] = []
            if form is not None:
                query = form
            elif found.route.reads_query:  # grpc-gateway parses no query a route cannot use
                query = parse_query(raw_query)
            message = build_request(found, query, body)
            if found.route.server_streaming:
                return await self._stream(request, found, message, metadata, timeout, request_id)
            assert timeout is not None
            return await self._call(request, found, message, metadata, timeout, request_id)
        except GatewayError as exc:
            note_status(exc.code.name)
            headers = {**exc.headers, **({"X-Request-Id": request_id} if request_id else {})}
            return error_response(
                exc.code,
                exc.message,
                details=exc.details,
                http_status=exc.http_status,
                headers=headers,
            )
        except Exception:
            # A gateway bug: answer in the API's error shape, never aiohttp's text/plain 500.
            log.exception("REST %s %s failed [%s]", request.method, path[:200], request_id)
            note_status(grpc.StatusCode.INTERNAL.name)
            return error_response(
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {request_id or 'none'})",
                headers={"X-Request-Id": request_id} if request_id else None,
            )

    async def _route(
        self, request: web.Request, path: str, query: str
    ) -> tuple[RouteMatch | MethodNotAllowed | None, list[tuple[str, str]] | None]:
        """The route, and for a form POST served as another method its form-and-query pairs.

        grpc-gateway's ServeMux: a POST with ``Content-Type:
        application/x-www-form-urlencoded`` takes the method named by
        ``X-HTTP-Method-Override``; without one, a path only a GET route has is
        served by that GET.  Either way the form fields join the query parameters
        (form first) and the body is no JSON.
        """
        form_post = (
            request.method == "POST"
            and request.headers.get("Content-Type") == "application/x-www-form-urlencoded"
        )
        override = request.headers.get("X-HTTP-Method-Override") if form_post else None
        form = await self._read_form(request, query) if override else None
        found = self._table.find(override.upper() if override else request.method, path)
        if form_post and not override and isinstance(found, MethodNotAllowed) and found.get:
            return found.get, await self._read_form(request, query)
        return found, form

    async def _read_form(self, request: web.Request, query: str) -> list[tuple[str, str]]:
        """Go's ``Request.ParseForm`` for a POST: the body's fields, then the URL query's."""
        body = await self._read_body(request)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the form is not valid UTF-8",
                reason=Reason.MALFORMED_REQUEST,
            ) from None
        return parse_query(text) + parse_query(query)

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
        request: web.Request,
        found: RouteMatch,
        message: Message,
        metadata: Metadata,
        timeout: float,
        request_id: str,
    ) -> web.StreamResponse:
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
            failed = self._rpc_error(exc, request_id)
            return await _with_trailers(request, failed, tuple(exc.trailing_metadata() or ()))
        headers = response_headers(initial)
        headers["X-Request-Id"] = request_id
        body: Any = message_to_dict(response)
        if route.response_body:
            field = response.DESCRIPTOR.fields_by_name[route.response_body]
            body = body.get(field.json_name)
        answer = web.Response(body=json.dumps(body).encode(), content_type=_JSON, headers=headers)
        return await _with_trailers(request, answer, trailing)

    async def _stream(
        self,
        request: web.Request,
        found: RouteMatch,
        message: Message,
        metadata: Metadata,
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
                # grpc-gateway reads a failure before the first message from the stream too:
                # the status's HTTP code, and the body its one {"error": ...} line.
                failed = self._rpc_error(exc, request_id)
                assert isinstance(failed.body, bytes)
                kept = {
                    name: value
                    for name, value in failed.headers.items()
                    if name.lower() not in ("content-type", "content-length")
                }
                return web.Response(
                    status=failed.status,
                    body=b'{"error": ' + failed.body + b"}\n",
                    content_type=_JSON,
                    headers=kept,
                )
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
                    "details": rpc_error_details(
                        exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())
                    ),
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
        headers = response_headers(initial)  # trailers: _with_trailers
        headers["X-Request-Id"] = request_id
        message = exc.details() or ""
        note_status(exc.code().name)
        if exc.code() == grpc.StatusCode.UNAVAILABLE and not trailers and not initial:
            # The channel's own failure (no server answered): its text names internal
            # addresses ("ipv4:10.0.0.5:50051: Connection refused"), so it stays in the log.
            log.warning("REST [%s]: the gRPC server did not answer: %s", request_id, message)
            message = "the service is unavailable"
        return error_response(
            exc.code(), message, details=details_from_trailers(trailers), headers=dict(headers)
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


def _request_target(request: web.Request) -> tuple[str, str]:
    """The path and query as the client sent them (``rel_url`` has them re-quoted:
    "%zz" there is "%25zz", and grpc-gateway refuses a bad escape)."""
    target = request.raw_path
    if not target.startswith("/"):  # absolute-form ("http://host/path"): yarl's reading
        return request.rel_url.raw_path, request.rel_url.raw_query_string
    path, _, query = target.partition("?")
    return path, query.partition("#")[0]


def _decoded_path(raw: str) -> str:
    """The path percent-decoded, as Go's net/http hands it to grpc-gateway's ServeMux."""
    if "%" not in raw:
        return raw
    try:
        if _BAD_ESCAPE.search(raw):
            raise ValueError(raw)
        return unquote_to_bytes(raw).decode("utf-8")
    except ValueError:  # UnicodeDecodeError too
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the path has an invalid escape",
            reason=Reason.MALFORMED_REQUEST,
        ) from None


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


async def _with_trailers(
    request: web.Request, response: web.Response, trailing: Sequence[Any]
) -> web.StreamResponse:
    """``response``, with the call's trailers when the client asked for them.

    As grpc-gateway: only a client that sent ``TE: trailers`` gets them, as HTTP/1.1
    chunked trailer fields ``Grpc-Trailer-<Name>`` announced in a ``Trailer`` header;
    other clients get none.  aiohttp cannot send trailer fields, so the chunked
    body's last chunk and the fields are written here.
    """
    fields = trailer_headers(trailing)
    wanted = "trailers" in request.headers.get("TE", "").lower()
    if not fields or not wanted or request.version < (1, 1):
        return response
    assert isinstance(response.body, bytes)
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "transfer-encoding")
    }
    headers["Trailer"] = ", ".join(dict.fromkeys(fields.keys()))
    streamed = web.StreamResponse(status=response.status, headers=headers)
    streamed.enable_chunked_encoding()
    writer: Any = await streamed.prepare(request)
    if response.body:
        await streamed.write(response.body)
    writer.chunked = False  # from here, bytes go out as they are: the chunked body's end
    section = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    await streamed.write(b"0\r\n" + section.encode("ascii") + b"\r\n")
    await streamed.write_eof()
    return streamed


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
