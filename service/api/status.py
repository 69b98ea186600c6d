"""The one mapping from the domain's exceptions to gRPC statuses, with their rich details.

Every failure carries a ``google.rpc.Status`` (the ``grpc-status-details-bin``
trailer; the REST shim renders its details as grpc-gateway does) whose details are:

* ``google.rpc.ErrorInfo`` always: a stable ``reason`` (``Reason``), the domain
  ``balances.v1``, and ``metadata`` (lowerCamelCase keys: ``walletId``, ``network``...);
* ``google.rpc.BadRequest`` for INVALID_ARGUMENT naming a request field;
* ``google.rpc.ResourceInfo`` for NOT_FOUND (never an ``owner``: another tenant's
  resource must read exactly as a missing one);
* ``google.rpc.RetryInfo`` for UNAVAILABLE and RESOURCE_EXHAUSTED;
* ``google.rpc.PreconditionFailure`` for FAILED_PRECONDITION.

The README's error table lists every reason; keep the two together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from service.api.retry_info import retry_info, status_trailer
from service.errors import (
    AddressTaken,
    AlreadyExists,
    ArchiveRequired,
    BalancesError,
    ChainUnavailable,
    CustomerNotFound,
    FeatureDisabled,
    InvalidArgument,
    NotFound,
    PriceUnavailable,
    RateLimited,
    Unauthenticated,
    UndecodableRequest,
    WalletNotFound,
    WebhookConfigNotFound,
)

__all__ = [
    "DOMAIN",
    "FIELD_REASONS",
    "UNAVAILABLE_RETRY_SECONDS",
    "Reason",
    "RichStatus",
    "rich_status",
    "status_for",
    "transport_status",
]

DOMAIN = "balances.v1"
# What an UNAVAILABLE answer's RetryInfo asks for: a node or price feed that failed
# is usually back (or failed over) within a second; sooner would only add load.
UNAVAILABLE_RETRY_SECONDS = 1.0


class Reason(StrEnum):
    """``ErrorInfo.reason``: stable, UPPER_SNAKE_CASE; clients branch on these."""

    # INVALID_ARGUMENT: the field at fault decides (FIELD_REASONS), else these.
    INVALID_WALLET_ID = "INVALID_WALLET_ID"
    INVALID_CUSTOMER_ID = "INVALID_CUSTOMER_ID"
    INVALID_ADDRESS = "INVALID_ADDRESS"
    INVALID_NETWORK = "INVALID_NETWORK"
    INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 (a reason, not a secret)
    INVALID_WEBHOOK_URL = "INVALID_WEBHOOK_URL"
    INVALID_WEBHOOK_EVENTS = "INVALID_WEBHOOK_EVENTS"
    INVALID_SINCE = "INVALID_SINCE"
    INVALID_AT_BLOCK = "INVALID_AT_BLOCK"  # a block after the head
    INVALID_AT_TIME = "INVALID_AT_TIME"  # a time in the future, or before the first block
    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # another field (REST query parameters)
    MALFORMED_REQUEST = "MALFORMED_REQUEST"  # the request as a whole does not decode
    INVALID_HEADER = "INVALID_HEADER"  # REST: a header that cannot be forwarded
    # NOT_FOUND
    WALLET_NOT_FOUND = "WALLET_NOT_FOUND"
    CUSTOMER_NOT_FOUND = "CUSTOMER_NOT_FOUND"
    WEBHOOK_CONFIG_NOT_FOUND = "WEBHOOK_CONFIG_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"  # anything else (an API key, from the CLI)
    ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"  # REST: no route for the path
    # ALREADY_EXISTS
    ADDRESS_TAKEN = "ADDRESS_TAKEN"
    ALREADY_EXISTS = "ALREADY_EXISTS"  # anything else (an API key, from the CLI)
    # UNAUTHENTICATED
    API_KEY_MISSING = "API_KEY_MISSING"
    API_KEY_INVALID = "API_KEY_INVALID"  # unknown, malformed or revoked: never which
    # RESOURCE_EXHAUSTED
    RATE_LIMITED = "RATE_LIMITED"
    # UNAVAILABLE, DEADLINE_EXCEEDED
    CHAIN_UNAVAILABLE = "CHAIN_UNAVAILABLE"
    PRICE_UNAVAILABLE = "PRICE_UNAVAILABLE"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"  # REST: the gRPC server did not answer
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    # FAILED_PRECONDITION
    ARCHIVE_NODE_REQUIRED = "ARCHIVE_NODE_REQUIRED"  # every provider pruned that block's state
    # UNIMPLEMENTED
    FEATURE_DISABLED = "FEATURE_DISABLED"
    METHOD_NOT_IMPLEMENTED = "METHOD_NOT_IMPLEMENTED"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"  # REST: 405
    # REST transport
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"  # 413
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"  # 408: the body was not sent in time
    CANCELLED = "CANCELLED"
    # INTERNAL
    INTERNAL = "INTERNAL"


# INVALID_ARGUMENT's reason, by the request field at fault (its proto name).
FIELD_REASONS: Mapping[str, Reason] = {
    "wallet_id": Reason.INVALID_WALLET_ID,
    "customer_id": Reason.INVALID_CUSTOMER_ID,
    "address": Reason.INVALID_ADDRESS,
    "network": Reason.INVALID_NETWORK,
    "page_size": Reason.INVALID_PAGE_SIZE,
    "page_token": Reason.INVALID_PAGE_TOKEN,
    "url": Reason.INVALID_WEBHOOK_URL,
    "events": Reason.INVALID_WEBHOOK_EVENTS,
    "since": Reason.INVALID_SINCE,
    "at_block": Reason.INVALID_AT_BLOCK,
    "at_time": Reason.INVALID_AT_TIME,
}

# A status's reason when nothing more is known (the REST shim's own failures, a
# status from grpc itself): by code.
_CODE_REASONS: Mapping[grpc.StatusCode, Reason] = {
    grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: Reason.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Reason.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED: Reason.API_KEY_INVALID,
    grpc.StatusCode.UNAVAILABLE: Reason.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED: Reason.METHOD_NOT_IMPLEMENTED,
    grpc.StatusCode.CANCELLED: Reason.CANCELLED,
    grpc.StatusCode.INTERNAL: Reason.INTERNAL,
}

_RESOURCE_TYPES: Mapping[type[NotFound], str] = {
    WalletNotFound: "balances.v1.Wallet",
    CustomerNotFound: "balances.v1.Customer",
    WebhookConfigNotFound: "balances.v1.WebhookConfig",
}


@dataclass(frozen=True)
class RichStatus:
    """A failed call's code, message and (unpacked) ``google.rpc`` details."""

    code: grpc.StatusCode
    message: str
    details: tuple[Message, ...]

    @property
    def reason(self) -> str:
        info = next(d for d in self.details if isinstance(d, error_details_pb2.ErrorInfo))
        return str(info.reason)

    def to_proto(self) -> status_pb2.Status:
        packed = []
        for detail in self.details:
            wrapped = any_pb2.Any()
            wrapped.Pack(detail)
            packed.append(wrapped)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def trailer(self) -> tuple[str, bytes]:
        """The ``grpc-status-details-bin`` trailer to end the call with."""
        return status_trailer(self.to_proto())


Metadata = dict[str, str]
_Describe = Callable[[Any], tuple[Reason, Metadata]]


def _where(error: ChainUnavailable | PriceUnavailable) -> Metadata:
    return {"network": error.network, **({"token": error.token} if error.token else {})}


def _invalid(error: InvalidArgument) -> tuple[Reason, Metadata]:
    if not error.field:
        return Reason.INVALID_ARGUMENT, {}
    return FIELD_REASONS.get(error.field, Reason.INVALID_ARGUMENT), {"field": error.field}


# Most specific first: the first class an error is an instance of decides.
_KINDS: tuple[tuple[type[BalancesError], grpc.StatusCode, _Describe], ...] = (
    (
        UndecodableRequest,
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda e: (Reason.MALFORMED_REQUEST, {}),
    ),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, _invalid),
    (
        WalletNotFound,
        grpc.StatusCode.NOT_FOUND,
        lambda e: (Reason.WALLET_NOT_FOUND, {"walletId": e.wallet_id}),
    ),
    (
        CustomerNotFound,
        grpc.StatusCode.NOT_FOUND,
        lambda e: (Reason.CUSTOMER_NOT_FOUND, {"customerId": e.customer_id}),
    ),
    (
        WebhookConfigNotFound,
        grpc.StatusCode.NOT_FOUND,
        lambda e: (Reason.WEBHOOK_CONFIG_NOT_FOUND, {}),
    ),
    (NotFound, grpc.StatusCode.NOT_FOUND, lambda e: (Reason.NOT_FOUND, {})),
    (
        AddressTaken,
        grpc.StatusCode.ALREADY_EXISTS,
        lambda e: (Reason.ADDRESS_TAKEN, {"network": e.network, "address": e.address}),
    ),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, lambda e: (Reason.ALREADY_EXISTS, {})),
    (
        Unauthenticated,
        grpc.StatusCode.UNAUTHENTICATED,
        lambda e: (Reason.API_KEY_MISSING if e.missing else Reason.API_KEY_INVALID, {}),
    ),
    (
        FeatureDisabled,
        grpc.StatusCode.UNIMPLEMENTED,
        lambda e: (Reason.FEATURE_DISABLED, {"feature": e.feature}),
    ),
    (
        RateLimited,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        lambda e: (Reason.RATE_LIMITED, {"quota": e.quota}),
    ),
    (
        ArchiveRequired,
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda e: (Reason.ARCHIVE_NODE_REQUIRED, {"network": e.network, "block": str(e.block)}),
    ),
    (
        ChainUnavailable,
        grpc.StatusCode.UNAVAILABLE,
        lambda e: (Reason.CHAIN_UNAVAILABLE, _where(e)),
    ),
    (
        PriceUnavailable,
        grpc.StatusCode.UNAVAILABLE,
        lambda e: (Reason.PRICE_UNAVAILABLE, _where(e)),
    ),
)


def rich_status(error: BalancesError, *, deadline_passed: bool = False) -> RichStatus:
    """The status a caller sees for an expected error (its message is returned as is).

    Upstream reads are bounded by the caller's deadline, so a chain that could not
    be read by then is reported as DEADLINE_EXCEEDED (reason ``DEADLINE_EXCEEDED``,
    the network and token kept), as the caller's own side would (whichever of the
    two statuses arrives first).
    """
    message = str(error)
    found = next(((code, how) for kind, code, how in _KINDS if isinstance(error, kind)), None)
    if found is None:  # a BalancesError nobody mapped: a bug
        return transport_status(grpc.StatusCode.INTERNAL, message)
    code, describe = found
    reason, metadata = describe(error)
    if code is grpc.StatusCode.UNAVAILABLE and deadline_passed:
        code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED
    details: list[Message] = [_error_info(reason, metadata)]
    if isinstance(error, InvalidArgument) and error.field:
        details.append(_bad_request(error.field, message, reason))
    if isinstance(error, NotFound):
        details.append(
            error_details_pb2.ResourceInfo(
                resource_type=_RESOURCE_TYPES.get(type(error), ""),
                resource_name=getattr(error, "wallet_id", None)
                or getattr(error, "customer_id", None)
                or "",
                description=message,
            )
        )
    if isinstance(error, ArchiveRequired):
        violation = error_details_pb2.PreconditionFailure.Violation(
            type="ARCHIVE_NODE", subject=error.network, description=message
        )
        details.append(error_details_pb2.PreconditionFailure(violations=[violation]))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and isinstance(error, RateLimited):
        details.append(retry_info(error.retry_after))
    elif code is grpc.StatusCode.UNAVAILABLE:
        details.append(retry_info(UNAVAILABLE_RETRY_SECONDS))
    return RichStatus(code, message, tuple(details))


def status_for(error: BalancesError, *, deadline_passed: bool = False) -> grpc.StatusCode:
    """Just the code of ``rich_status``."""
    return rich_status(error, deadline_passed=deadline_passed).code


def transport_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    field: str = "",
    metadata: Mapping[str, str] | None = None,
) -> RichStatus:
    """A failure that is no ``BalancesError``: the transport's own (a bug, an unknown
    method, the REST shim refusing a request, a gRPC server that did not answer).

    Without ``reason``: the field's (INVALID_ARGUMENT), else the code's, else the
    code's name (a status no path of ours makes: grpc's own RESOURCE_EXHAUSTED, say).
    """
    if reason is None:
        by_field = FIELD_REASONS.get(field) if code is grpc.StatusCode.INVALID_ARGUMENT else None
        reason = by_field or _CODE_REASONS.get(code) or code.name
    all_metadata = {**({"field": field} if field else {}), **(metadata or {})}
    details: list[Message] = [_error_info(reason, all_metadata)]
    if field:
        details.append(_bad_request(field, message, reason))
    if code is grpc.StatusCode.UNAVAILABLE:
        details.append(retry_info(UNAVAILABLE_RETRY_SECONDS))
    return RichStatus(code, message, tuple(details))


def _error_info(reason: str, metadata: Mapping[str, str]) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)


def _bad_request(field: str, description: str, reason: str) -> error_details_pb2.BadRequest:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=field, description=description, reason=reason
    )
    return error_details_pb2.BadRequest(field_violations=[violation])
