"""HTTP headers <-> gRPC metadata, and the Grpc-Timeout header, as grpc-gateway's defaults.

Forwarded as grpc-gateway's ``DefaultHeaderMatcher`` and ``AnnotateContext`` do:
``Grpc-Metadata-<name>`` as ``<name>`` (a ``-Bin`` name base64-decoded to binary
metadata; a name or value that cannot be metadata skipped, as are names gRPC
reserves), the IANA permanent headers (``Accept``, ``User-Agent``, ``Cookie``...)
as ``grpcgateway-<name>``, ``Authorization`` also as ``authorization``,
``X-Forwarded-Host`` (or the Host), and ``X-Forwarded-For`` with the peer appended.
Beyond grpc-gateway: ``X-API-Key`` (its matcher would drop it; the public API
authenticates with it) and ``X-Request-Id`` (kept when well-formed, else
replaced, by the server's own policy in ``service.request_ids``, so every REST
call has one and it is the ID the server uses).

Response metadata comes back as ``Grpc-Metadata-<Name>`` headers; trailers only
when the client sent ``TE: trailers``, as ``Grpc-Trailer-<Name>`` (see app.py).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from multidict import CIMultiDict

from service.api.status import Reason
from service.gateway.errors import GatewayError
from service.request_ids import accept_request_id

__all__ = [
    "MAX_TIMEOUT_SECONDS",
    "Metadata",
    "grpc_timeout",
    "request_metadata",
    "response_headers",
    "trailer_headers",
]

Metadata = list[tuple[str, Any]]  # str values; bytes for a "-bin" key

_METADATA_PREFIX = "grpc-metadata-"
# Go's strconv.ParseInt(s, 10, 64) and a unit: [0-9], as \d takes any Unicode digit.
_TIMEOUT = re.compile(r"([+-]?[0-9]+)([HMSmun])")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Far beyond any call or watch a client means; far below where grpc's deadline overflows.
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600.0
_KEY = re.compile(r"[0-9A-Za-z_.-]+")  # grpc-gateway's isValidGRPCMetadataKey
_RESERVED = ("grpc-", ":")  # names gRPC keeps for itself (grpc-go drops them when sent)
_RESERVED_NAMES = frozenset(("content-type", "user-agent", "te", "connection"))
# grpc-gateway's isPermanentHTTPHeader (Host is not among Go's request headers).
_PERMANENT = frozenset(
    name.lower()
    for name in (
        "Accept", "Accept-Charset", "Accept-Language", "Accept-Ranges", "Authorization",
        "Cache-Control", "Content-Type", "Cookie", "Date", "Expect", "From", "If-Match",
        "If-Modified-Since", "If-None-Match", "If-Schedule-Tag-Match", "If-Unmodified-Since",
        "Max-Forwards", "Origin", "Pragma", "Referer", "User-Agent", "Via", "Warning",
    )
)  # fmt: skip


def request_metadata(headers: Mapping[str, str] | Any, peer: str | None) -> tuple[Metadata, str]:
    """Metadata to send upstream, and the request ID (the given one when well-formed)."""
    metadata: Metadata = []
    for name, value in headers.items():
        lower = name.lower()
        if lower == "x-api-key":
            # A key that cannot be metadata is just a wrong key: sent as "", it gets
            # the server's one UNAUTHENTICATED answer (401), not a 400 saying why.
            metadata.append((lower, value if _is_printable_ascii(value) else ""))
            continue
        if lower == "authorization":
            metadata.append((lower, _ascii(value, name)))
        if lower in _PERMANENT:
            if _is_printable_ascii(value):
                metadata.append(("grpcgateway-" + lower, value))
        elif lower.startswith(_METADATA_PREFIX):
            entry = _forwarded(name, lower[len(_METADATA_PREFIX) :], value)
            if entry is not None:
                metadata.append(entry)
    request_id = accept_request_id(headers.get("X-Request-Id"))
    # First: the server takes the first x-request-id (a Grpc-Metadata-X-Request-Id comes later).
    metadata.insert(0, ("x-request-id", request_id))
    host = headers.get("X-Forwarded-Host") or headers.get("Host")
    if host and _is_printable_ascii(host):
        metadata.append(("x-forwarded-host", host))
    forwarded = [v.strip() for v in headers.get("X-Forwarded-For", "").split(",") if v.strip()]
    if peer:
        forwarded.append(peer)
    if forwarded:
        metadata.append(("x-forwarded-for", _ascii(", ".join(forwarded), "X-Forwarded-For")))
    return metadata, request_id


def _forwarded(header: str, key: str, value: str) -> tuple[str, Any] | None:
    """A ``Grpc-Metadata-`` header as metadata; None when grpc-gateway/grpc-go would skip it."""
    if not _KEY.fullmatch(key) or key.startswith(_RESERVED) or key in _RESERVED_NAMES:
        return None
    if key.endswith("-bin"):
        try:  # grpc-gateway's decodeBinHeader: padded, or unpadded, standard base64
            padded = value + "=" * (-len(value) % 4) if len(value) % 4 else value
            return key, base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid binary header {header[:64]}",
                reason=Reason.INVALID_HEADER,
                metadata={"header": header[:64]},
            ) from None
    if not _is_printable_ascii(value):
        return None
    return key, value


def grpc_timeout(value: str | None, default: float) -> float:
    """Seconds from a ``Grpc-Timeout`` header (``100m``, ``5S``, ``1M``...), else ``default``.

    grpc-gateway's ``timeoutDecode``: an int64 in Go syntax (a sign allowed) and a
    unit.  No header, an empty one or zero ask for no deadline of the client's:
    the default applies.  A negative one has expired already (504).  A value above
    ``MAX_TIMEOUT_SECONDS`` is clamped to it; unclamped, ``99999999H`` (~11,000
    years) overflows grpc's deadline arithmetic into one already passed (Go's
    ``time.Duration`` wraps around instead).
    """
    if not value:
        return default
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None or not -(2**63) <= int(match.group(1)) < 2**63:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Grpc-Timeout {value[:32]!r} is invalid: expected an integer and a unit "
            "(H, M, S, m, u, n)",
            reason=Reason.INVALID_HEADER,
            metadata={"header": "Grpc-Timeout"},
        )
    number = int(match.group(1))
    if number == 0:
        return default
    if number < 0:
        raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
    return min(number * _UNIT_SECONDS[match.group(2)], MAX_TIMEOUT_SECONDS)


def response_headers(metadata: Iterable[Any]) -> CIMultiDict[str]:
    """gRPC response headers as ``Grpc-Metadata-<Name>`` (binary ones skipped)."""
    return _prefixed("Grpc-Metadata-", metadata)


def trailer_headers(metadata: Iterable[Any]) -> CIMultiDict[str]:
    """gRPC trailers as ``Grpc-Trailer-<Name>`` fields (binary ones skipped)."""
    return _prefixed("Grpc-Trailer-", metadata)


def _prefixed(prefix: str, metadata: Iterable[Any]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in metadata:
        if isinstance(value, str) and not key.startswith(_RESERVED) and _KEY.fullmatch(key):
            headers.add(_canonical(prefix + key), value)
    return headers


def _canonical(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: ``grpc-metadata-x-id`` -> ``Grpc-Metadata-X-Id``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _is_printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _ascii(value: str, header: str) -> str:
    if not _is_printable_ascii(value):
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"header {header} must be printable ASCII",
            reason=Reason.INVALID_HEADER,
            metadata={"header": header[:64]},
        )
    return value
