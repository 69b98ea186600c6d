"""HTTP headers <-> gRPC metadata, and the Grpc-Timeout header.

Forwarded: ``X-API-Key`` (grpc-gateway's default matcher would drop it; the
public API authenticates with it), ``Authorization``, ``Grpc-Metadata-<name>``
as ``<name>``, ``X-Request-Id`` (kept when well-formed, else replaced, by the
server's own policy in ``service.request_ids``, so every REST call has one and
it is the ID the server uses), and ``X-Forwarded-For`` with the peer address
appended.  ``Grpc-Timeout`` sets the call's deadline (clamped to 30 days).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from service.gateway.errors import GatewayError
from service.request_ids import accept_request_id

__all__ = ["MAX_TIMEOUT_SECONDS", "grpc_timeout", "request_metadata", "response_headers"]

_METADATA_PREFIX = "grpc-metadata-"
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")  # [0-9]: \d takes any Unicode digit
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Far beyond any call or watch a client means; far below where grpc's deadline overflows.
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600.0
_KEY = re.compile(r"[0-9a-z_.-]+")
_RESERVED = ("grpc-", ":")


def request_metadata(
    headers: Mapping[str, str] | Any, peer: str | None
) -> tuple[list[tuple[str, str]], str]:
    """Metadata to send upstream, and the request ID (the given one when well-formed)."""
    metadata: list[tuple[str, str]] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower == "x-api-key":
            # A key that cannot be metadata is just a wrong key: sent as "", it gets
            # the server's one UNAUTHENTICATED answer (401), not a 400 saying why.
            metadata.append((lower, value if _is_printable_ascii(value) else ""))
        elif lower == "authorization":
            metadata.append((lower, _ascii(value, name)))
        elif lower.startswith(_METADATA_PREFIX):
            key = lower[len(_METADATA_PREFIX) :]
            if not _KEY.fullmatch(key) or key.startswith(_RESERVED) or key.endswith("-bin"):
                raise GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"header {name} is not forwardable metadata"
                )
            metadata.append((key, _ascii(value, name)))
    request_id = accept_request_id(headers.get("X-Request-Id"))
    # First: the server takes the first x-request-id (a Grpc-Metadata-X-Request-Id comes later).
    metadata.insert(0, ("x-request-id", request_id))
    forwarded = [v.strip() for v in headers.get("X-Forwarded-For", "").split(",") if v.strip()]
    if peer:
        forwarded.append(peer)
    if forwarded:
        metadata.append(("x-forwarded-for", _ascii(", ".join(forwarded), "X-Forwarded-For")))
    return metadata, request_id


def grpc_timeout(value: str | None, default: float) -> float:
    """Seconds from a ``Grpc-Timeout`` header (``100m``, ``5S``, ``1M``...), else ``default``.

    The grammar is gRPC's: a positive integer of 1-8 digits and a unit.  A value
    above ``MAX_TIMEOUT_SECONDS`` is clamped to it, as gRPC servers saturate a
    huge timeout rather than refuse it; unclamped, ``99999999H`` (~11,000 years)
    overflows grpc's deadline arithmetic into one already passed.
    """
    if value is None:
        return default
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None or int(match.group(1)) == 0:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Grpc-Timeout {value[:32]!r} is invalid: expected a positive integer of 1-8 "
            "digits and a unit (H, M, S, m, u, n)",
        )
    return min(int(match.group(1)) * _UNIT_SECONDS[match.group(2)], MAX_TIMEOUT_SECONDS)


def response_headers(*metadata: Iterable[Any]) -> dict[str, str]:
    """gRPC response headers and trailers as ``Grpc-Metadata-<name>`` (binary ones skipped)."""
    headers: dict[str, str] = {}
    for entries in metadata:
        for key, value in entries:
            if isinstance(value, str) and not key.startswith(_RESERVED):
                headers[f"Grpc-Metadata-{key}"] = value
    return headers


def _is_printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _ascii(value: str, header: str) -> str:
    if not _is_printable_ascii(value):
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT, f"header {header} must be printable ASCII"
        )
    return value
