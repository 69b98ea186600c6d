"""The REST error body: ``{"code": <grpc code>, "message": ..., "details": [Any JSON]}``.

The body is the call's ``google.rpc.Status`` as grpc-gateway's default error
handler writes it: protojson with ``EmitUnpopulated``, so each detail is its
``Any`` JSON (``{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": ...}``)
with its unpopulated fields printed (``""``, ``{}``, ``[]``, and ``null`` for an
unset message field).  The details come from the server's ``grpc-status-details-bin``
trailer; a failure of the shim's own (no route, a query parameter that does not
parse, a gRPC server that did not answer) gets details made here by the same
rules (``service.api.status.transport_status``): every error body has an ErrorInfo.

A ``google.rpc.RetryInfo`` among the details (a call refused by a rate limit or
quota, an UNAVAILABLE) also becomes a ``Retry-After`` header, in whole seconds
rounded up: a deliberate addition to grpc-gateway, which leaves the delay in the
body only.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from service.api.retry_info import STATUS_DETAILS_KEY
from service.api.status import Reason, RichStatus, transport_status
from service.gateway.http_status import http_status_from_code

__all__ = [
    "GatewayError",
    "details_from_trailers",
    "error_response",
    "rpc_error_details",
    "status_details",
]

# The shim's own answers that have an HTTP status of their own: their reason.
_HTTP_REASONS = {
    404: Reason.ROUTE_NOT_FOUND,
    405: Reason.METHOD_NOT_ALLOWED,
    408: Reason.REQUEST_TIMEOUT,
    413: Reason.REQUEST_TOO_LARGE,
}
WWW_AUTHENTICATE = 'ApiKey realm="balances", header="X-API-Key"'
_RETRY_INFO_TYPE = "type.googleapis.com/" + error_details_pb2.RetryInfo.DESCRIPTOR.full_name


class GatewayError(Exception):
    """A request the gateway rejects itself, before or instead of calling gRPC.

    ``field``: the request field at fault (proto name, dotted when nested), for the
    BadRequest detail and the reason (``FIELD_REASONS``); ``reason`` overrides it.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        http_status: int | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
        field: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or http_status_from_code(code)
        self.headers = headers or {}
        self.details = status_details(
            transport_status(
                code,
                message,
                reason=reason or _HTTP_REASONS.get(self.http_status),
                field=field,
                metadata=metadata,
            )
        )


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    details: Sequence[dict[str, Any]] = (),
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The error answer; without ``details``, the ones ``transport_status`` gives."""
    status = http_status or http_status_from_code(code)
    if not details:
        details = status_details(transport_status(code, message, reason=_HTTP_REASONS.get(status)))
    all_headers = dict(headers or {})
    if code == grpc.StatusCode.UNAUTHENTICATED:
        all_headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    retry_after = _retry_after(details)
    if retry_after is not None:
        all_headers.setdefault("Retry-After", str(retry_after))
    body = {"code": code.value[0], "message": message, "details": list(details)}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),  # bytes: exactly "application/json", as grpc-gateway
        content_type="application/json",
        headers=all_headers,
    )


def details_from_trailers(trailers: Sequence[Any]) -> list[dict[str, Any]]:
    """The ``google.rpc.Status`` details a server attached, as proto3 JSON ``Any`` objects."""
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return []  # not ours to show: the caller gets the shim's own details
            return [_any_json(detail) for detail in status.details]
    return []


def rpc_error_details(
    code: grpc.StatusCode, message: str, trailers: Sequence[Any]
) -> list[dict[str, Any]]:
    """A failed call's details: the server's, else (a status grpc made itself: a
    deadline, a lost connection) the ones ``transport_status`` gives for ``code``."""
    return details_from_trailers(trailers) or status_details(transport_status(code, message))


def status_details(status: RichStatus) -> list[dict[str, Any]]:
    """``status``'s details as the JSON error body carries them."""
    return [_any_json(detail) for detail in status.to_proto().details]


def _retry_after(details: Sequence[dict[str, Any]]) -> int | None:
    """Whole seconds, rounded up, of the first RetryInfo's delay (proto3 JSON: ``"1.500s"``)."""
    for detail in details:
        delay = detail.get("retryDelay")
        if detail.get("@type") == _RETRY_INFO_TYPE and isinstance(delay, str):
            try:
                seconds = Decimal(delay.removesuffix("s"))
            except InvalidOperation:
                return None
            return max(0, math.ceil(seconds)) if seconds.is_finite() else None
    return None


def _any_json(detail: any_pb2.Any) -> dict[str, Any]:
    """``detail`` as protojson with ``EmitUnpopulated`` prints it (grpc-gateway's default)."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(
            detail.type_url.rpartition("/")[2]
        )
        message = message_factory.GetMessageClass(descriptor)()
        message.ParseFromString(detail.value)
        if descriptor.full_name.startswith("google.protobuf."):
            # Well-known types are {"@type", "value"} in JSON: json_format knows how.
            return dict(json_format.MessageToDict(detail))
        body = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    except (TypeError, KeyError, DecodeError, json_format.Error):
        # A detail type this process does not know: keep it, opaque.
        return {
            "@type": detail.type_url,
            "value": base64.b64encode(detail.value).decode("ascii"),
        }
    return {"@type": detail.type_url, **_with_nulls(message, body)}


def _with_nulls(message: Message, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``null`` for each unset singular message field, as protojson's
    ``EmitUnpopulated`` prints them (json_format's option leaves them out)."""
    for field in message.DESCRIPTOR.fields:
        if field.message_type is None or field.containing_oneof is not None:
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        value: Any = getattr(message, field.name)
        if field.is_repeated:
            for item, shown in zip(value, body.get(field.json_name, ()), strict=False):
                if isinstance(shown, dict) and not _is_well_known(item):
                    _with_nulls(item, shown)
        elif not message.HasField(field.name):
            body[field.json_name] = None
        elif not _is_well_known(value):
            _with_nulls(value, body[field.json_name])
    return body


def _is_well_known(message: Message) -> bool:
    return message.DESCRIPTOR.full_name.startswith("google.protobuf.")
