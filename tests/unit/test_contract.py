"""Contract checks derived from what is registered, not from hand-written lists."""

from __future__ import annotations

import grpc
import pytest

from service.api.services import API_SERVICES
from service.api.status import status_for
from service.errors import (
    AddressTaken,
    ArchiveRequired,
    BalancesError,
    ChainUnavailable,
    CustomerNotFound,
    FeatureDisabled,
    RateLimited,
    WalletNotFound,
)
from service.gateway.http_status import http_status_from_code
from service.gateway.openapi import openapi_document
from service.gateway.routes import routes_of


def _subclasses(cls: type[BalancesError]) -> list[type[BalancesError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _instance(kind: type[BalancesError]) -> BalancesError:
    """One instance of each error class, whatever its constructor takes."""
    samples: dict[type[BalancesError], BalancesError] = {
        WalletNotFound: WalletNotFound("wal_x"),
        CustomerNotFound: CustomerNotFound("cus_x"),
        ChainUnavailable: ChainUnavailable("polygon", "down"),
        ArchiveRequired: ArchiveRequired("polygon", 12),
        RateLimited: RateLimited("key over its rate", retry_after=1.5),
        AddressTaken: AddressTaken("polygon", "0x" + "ab" * 20),
        FeatureDisabled: FeatureDisabled("watch", "watching is not enabled"),
    }
    if kind in samples:
        return samples[kind]
    for args in (("message",), (), ("polygon", "USDC", "message")):
        try:
            return kind(*args)
        except TypeError:
            continue
    raise AssertionError(f"cannot build {kind.__name__}: add it to the samples")


ERROR_CLASSES = _subclasses(BalancesError)


def test_the_tree_is_found() -> None:
    assert len(ERROR_CLASSES) >= 8


@pytest.mark.parametrize("kind", ERROR_CLASSES, ids=lambda k: k.__name__)
def test_every_error_class_has_a_grpc_and_an_http_status(kind: type[BalancesError]) -> None:
    code = status_for(_instance(kind))
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
    assert 400 <= http_status_from_code(code) < 600
    assert http_status_from_code(code) != 500


def test_every_annotated_route_is_in_openapi() -> None:
    routes = routes_of(API_SERVICES)
    assert routes, "no annotated routes found"
    document = openapi_document(routes, title="t", version="v")
    operations = {
        (method.upper(), operation["operationId"])
        for path in document["paths"].values()
        for method, operation in path.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    annotated = {
        (r.http_method, r.method.containing_service.name + "_" + r.method.name) for r in routes
    }
    missing = {
        (method, rpc)
        for method, rpc in annotated
        if not any(m == method and op.startswith(rpc) for m, op in operations)
    }
    assert not missing
