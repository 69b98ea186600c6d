"""Checking JSON against the generated OpenAPI document: the Balances document and its schemas."""

from __future__ import annotations

from typing import Any

from openapi_schema_validator import OAS30Validator, oas30_format_checker

from balances.v1 import balances_pb2 as pb
from service.gateway.openapi import openapi_document
from service.gateway.routes import routes_of


def balances_document() -> dict[str, Any]:
    service = pb.DESCRIPTOR.services_by_name["BalancesService"]
    return openapi_document(routes_of([service]), title="Balances API", version="v1")


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> OAS30Validator:
    """A validator for ``schema`` whose $refs resolve inside ``document`` (formats checked)."""
    return OAS30Validator(
        {**schema, "components": document["components"]}, format_checker=oas30_format_checker
    )


def assert_valid(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    errors = list(schema_validator(document, schema).iter_errors(instance))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def ok_schema(document: dict[str, Any], path: str, method: str = "get") -> dict[str, Any]:
    """The schema of the 200 response of ``method path``."""
    schema: dict[str, Any] = document["paths"][path][method]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]
    return schema


def error_schema(document: dict[str, Any], path: str, method: str = "get") -> dict[str, Any]:
    """The schema of the default (error) response of ``method path``."""
    schema: dict[str, Any] = document["paths"][path][method]["responses"]["default"]["content"][
        "application/json"
    ]["schema"]
    return schema
