"""service.api.status: every BalancesError has its code, reason and details; the REST
rendering is grpc-gateway's (protojson with EmitUnpopulated)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from service.api.status import (
    DOMAIN,
    FIELD_REASONS,
    Reason,
    rich_status,
    transport_status,
)
from service.errors import (
    AddressTaken,
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
from service.gateway.errors import (
    GatewayError,
    details_from_trailers,
    error_response,
    rpc_error_details,
    status_details,
)
from tests.unit.test_contract import ERROR_CLASSES, _instance

README = Path(__file__).resolve().parents[2] / "README.md"


def _kinds(status_details_: tuple[object, ...]) -> list[str]:
    return [type(d).__name__ for d in status_details_]


@pytest.mark.parametrize("kind", ERROR_CLASSES, ids=lambda k: k.__name__)
def test_every_error_class_has_an_error_info_with_a_documented_reason(
    kind: type[BalancesError],
) -> None:
    status = rich_status(_instance(kind))
    assert status.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    info = status.details[0]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.domain == DOMAIN and re.fullmatch(r"[A-Z][A-Z0-9_]{0,62}", info.reason)
    assert f"| `{info.reason}` |" in README.read_text()
    assert status.message == str(_instance(kind))


def test_every_reason_is_in_the_readme_table_with_its_code() -> None:
    text = README.read_text()
    for reason in Reason:
        row = re.search(rf"^\| `{reason}` \| `([A-Z_]+)` \| (\d+) \|", text, re.MULTILINE)
        assert row, f"{reason} is not in the README's error table"


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata", "kinds"),
    [
        (
            WalletNotFound("wal_x"),
            grpc.StatusCode.NOT_FOUND,
            "WALLET_NOT_FOUND",
            {"walletId": "wal_x"},
            ["ErrorInfo", "ResourceInfo"],
        ),
        (
            CustomerNotFound("cus_x"),
            grpc.StatusCode.NOT_FOUND,
            "CUSTOMER_NOT_FOUND",
            {"customerId": "cus_x"},
            ["ErrorInfo", "ResourceInfo"],
        ),
        (
            WebhookConfigNotFound(),
            grpc.StatusCode.NOT_FOUND,
            "WEBHOOK_CONFIG_NOT_FOUND",
            {},
            ["ErrorInfo", "ResourceInfo"],
        ),
        (
            NotFound("API key k not found"),
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
            {},
            ["ErrorInfo", "ResourceInfo"],
        ),
        (
            InvalidArgument("page_token is invalid", field="page_token"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
            {"field": "page_token"},
            ["ErrorInfo", "BadRequest"],
        ),
        (
            InvalidArgument("something", field="rotate_secret"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            {"field": "rotate_secret"},
            ["ErrorInfo", "BadRequest"],
        ),
        (
            InvalidArgument("no field"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            {},
            ["ErrorInfo"],
        ),
        (
            UndecodableRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            {},
            ["ErrorInfo"],
        ),
        (
            AddressTaken("polygon", "0xAb"),
            grpc.StatusCode.ALREADY_EXISTS,
            "ADDRESS_TAKEN",
            {"network": "polygon", "address": "0xAb"},
            ["ErrorInfo"],
        ),
        (
            Unauthenticated(missing=True),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_MISSING",
            {},
            ["ErrorInfo"],
        ),
        (Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID", {}, ["ErrorInfo"]),
        (
            RateLimited("slow down", 2.25, quota="in_flight"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            {"quota": "in_flight"},
            ["ErrorInfo", "RetryInfo"],
        ),
        (
            ChainUnavailable("polygon", "down", token="USDC"),
            grpc.StatusCode.UNAVAILABLE,
            "CHAIN_UNAVAILABLE",
            {"network": "polygon", "token": "USDC"},
            ["ErrorInfo", "RetryInfo"],
        ),
        (
            ChainUnavailable("polygon", "down"),
            grpc.StatusCode.UNAVAILABLE,
            "CHAIN_UNAVAILABLE",
            {"network": "polygon"},
            ["ErrorInfo", "RetryInfo"],
        ),
        (
            ArchiveRequired("polygon", 12),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ARCHIVE_NODE_REQUIRED",
            {"network": "polygon", "block": "12"},
            ["ErrorInfo", "PreconditionFailure"],
        ),
        (
            InvalidArgument("at_block 9 is after the newest block", field="at_block"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_AT_BLOCK",
            {"field": "at_block"},
            ["ErrorInfo", "BadRequest"],
        ),
        (
            PriceUnavailable("ethereum", "ETH", "stale"),
            grpc.StatusCode.UNAVAILABLE,
            "PRICE_UNAVAILABLE",
            {"network": "ethereum", "token": "ETH"},
            ["ErrorInfo", "RetryInfo"],
        ),
        (
            FeatureDisabled("watch", "watching is not enabled"),
            grpc.StatusCode.UNIMPLEMENTED,
            "FEATURE_DISABLED",
            {"feature": "watch"},
            ["ErrorInfo"],
        ),
    ],
)
def test_the_mapping(
    error: BalancesError,
    code: grpc.StatusCode,
    reason: str,
    metadata: dict[str, str],
    kinds: list[str],
) -> None:
    status = rich_status(error)
    assert status.code == code and status.reason == reason
    info = status.details[0]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == metadata
    assert _kinds(status.details) == kinds
    proto = status_pb2.Status.FromString(status.trailer()[1])
    assert (proto.code, proto.message) == (code.value[0], str(error))


def test_a_rate_limit_retry_delay_is_the_errors_and_unavailable_is_a_second() -> None:
    limited = rich_status(RateLimited("x", 2.25))
    assert limited.details[1] == error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=2, nanos=250_000_000)
    )
    down = rich_status(ChainUnavailable("polygon", "down"))
    assert down.details[1] == error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=1)
    )


def test_a_read_cut_by_the_deadline_is_deadline_exceeded_keeping_the_network() -> None:
    status = rich_status(ChainUnavailable("polygon", "timed out", "USDC"), deadline_passed=True)
    assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status.reason == "DEADLINE_EXCEEDED"
    assert _kinds(status.details) == ["ErrorInfo"]  # no RetryInfo: the caller's time is up
    info = status.details[0]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"network": "polygon", "token": "USDC"}
    # A deadline has no bearing on errors that are not about reading upstream.
    assert rich_status(WalletNotFound("wal_x"), deadline_passed=True).reason == "WALLET_NOT_FOUND"


def test_not_found_never_names_an_owner_and_is_the_same_for_any_tenant() -> None:
    a, b = rich_status(WalletNotFound("wal_x")), rich_status(WalletNotFound("wal_x"))
    assert a.trailer() == b.trailer()
    resource = a.details[1]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert resource.owner == ""
    assert (resource.resource_type, resource.resource_name) == ("balances.v1.Wallet", "wal_x")


def test_field_reasons_are_reasons() -> None:
    assert set(FIELD_REASONS.values()) <= set(Reason)


def test_transport_statuses() -> None:
    internal = transport_status(
        grpc.StatusCode.INTERNAL, "internal error (request id r1)", metadata={"requestId": "r1"}
    )
    assert internal.reason == "INTERNAL"
    down = transport_status(grpc.StatusCode.UNAVAILABLE, "the service is unavailable")
    assert (down.reason, _kinds(down.details)) == (
        "SERVICE_UNAVAILABLE",
        ["ErrorInfo", "RetryInfo"],
    )
    field = transport_status(grpc.StatusCode.INVALID_ARGUMENT, "bad", field="wallet_id")
    assert (field.reason, _kinds(field.details)) == (
        "INVALID_WALLET_ID",
        ["ErrorInfo", "BadRequest"],
    )
    assert transport_status(grpc.StatusCode.DATA_LOSS, "x").reason == "DATA_LOSS"


# --- REST rendering ---------------------------------------------------------------

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def test_details_render_as_grpc_gateway_with_unpopulated_fields() -> None:
    details = status_details(rich_status(InvalidArgument("bad id", field="wallet_id")))
    assert details == [
        {
            "@type": ERROR_INFO,
            "reason": "INVALID_WALLET_ID",
            "domain": "balances.v1",
            "metadata": {"field": "wallet_id"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [
                {
                    "field": "wallet_id",
                    "description": "bad id",
                    "reason": "INVALID_WALLET_ID",
                    "localizedMessage": None,  # protojson EmitUnpopulated: an unset message
                }
            ],
        },
    ]
    empty = status_details(rich_status(WebhookConfigNotFound()))
    assert empty[0]["metadata"] == {}  # an empty map is printed, as grpc-gateway does
    assert empty[1] == {
        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
        "resourceType": "balances.v1.WebhookConfig",
        "resourceName": "",
        "owner": "",
        "description": "no webhook is configured for this tenant",
    }


def test_details_from_the_trailer_are_the_servers() -> None:
    status = rich_status(ChainUnavailable("polygon", "down"))
    trailers = [("x-request-id", "r1"), status.trailer()]
    assert details_from_trailers(trailers) == status_details(status)
    assert rpc_error_details(grpc.StatusCode.UNAVAILABLE, "x", trailers) == status_details(status)


def test_a_status_grpc_made_itself_gets_details_by_its_code() -> None:
    (info,) = rpc_error_details(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", [])
    assert (info["reason"], info["domain"]) == ("DEADLINE_EXCEEDED", DOMAIN)


def test_an_unknown_or_broken_detail_is_kept_opaque_or_dropped() -> None:
    foreign = any_pb2.Any(type_url="type.googleapis.com/acme.Unknown", value=b"\x08\x01")
    status = status_pb2.Status(code=5, message="m", details=[foreign])
    trailer = ("grpc-status-details-bin", status.SerializeToString())
    assert details_from_trailers([trailer]) == [
        {"@type": "type.googleapis.com/acme.Unknown", "value": "CAE="}
    ]
    assert details_from_trailers([("grpc-status-details-bin", b"\xff\xff")]) == []


@pytest.mark.parametrize(
    ("http_status", "reason"),
    [(404, "ROUTE_NOT_FOUND"), (405, "METHOD_NOT_ALLOWED"), (413, "REQUEST_TOO_LARGE")],
)
def test_the_shims_own_answers_get_a_reason_by_http_status(http_status: int, reason: str) -> None:
    code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(
        http_status, grpc.StatusCode.INVALID_ARGUMENT
    )
    response = error_response(code, "x", http_status=http_status)
    body = json.loads(response.text)
    assert body["details"][0]["reason"] == reason
    error = GatewayError(code, "x", http_status=http_status)
    assert error.details[0]["reason"] == reason


def test_an_unavailable_answer_sets_retry_after() -> None:
    response = error_response(grpc.StatusCode.UNAVAILABLE, "the service is unavailable")
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    body = json.loads(response.text)
    assert [d["@type"].rsplit(".", 1)[1] for d in body["details"]] == ["ErrorInfo", "RetryInfo"]
