"""The REST error body: ``{"code": <grpc code>, "message": ..., "details": [Any JSON]}``.

A ``google.rpc.RetryInfo`` among the details (a call refused by a rate limit or
quota) also becomes a ``Retry-After`` header, in whole seconds rounded up: a
deliberate addition to grpc-gateway, which leaves the delay in the body only.
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
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2

from service.gateway.http_status import http_status_from_code

__all__ = ["GatewayError", "details_from_trailers", "error_response"]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
WWW_AUTHENTICATE = 'ApiKey realm="balances", header="X-API-Key"'
_RETRY_INFO_TYPE = "type.googleapis.com/" + error_details_pb2.RetryInfo.DESCRIPTOR.full_name


class GatewayError(Exception):
    """A request the gateway rejects itself, before or instead of calling gRPC."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        http_status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or http_status_from_code(code)
        self.headers = headers or {}


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    details: Sequence[dict[str, Any]] = (),
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    status = http_status or http_status_from_code(code)
    all_headers = dict(headers or {})
    if code == grpc.StatusCode.UNAUTHENTICATED:
        all_headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    retry_after = _retry_after(details)
    if retry_after is not None:
        all_headers.setdefault("Retry-After", str(retry_after))
    body = {"code": code.value[0], "message": message, "details": list(details)}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=all_headers,
    )


def details_from_trailers(trailers: Sequence[Any]) -> list[dict[str, Any]]:
    """The ``google.rpc.Status`` details a server attached, as proto3 JSON ``Any`` objects."""
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return [_any_json(detail) for detail in status.details]
    return []


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
    try:
        return json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):
        # A detail type this process does not know: keep it, opaque.
        return {
            "@type": detail.type_url,
            "value": base64.b64encode(detail.value).decode("ascii"),
        }
