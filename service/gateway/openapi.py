"""An OpenAPI 3.0 document for the REST routes, built from the same descriptors the gateway serves.

Modelled on grpc-gateway's protoc-gen-openapiv2, in OpenAPI 3 and at run time:

- one path per template, variables named by their lowerCamelCase JSON field path
  (``{wallet_id}`` -> ``{walletId}``); a multi-segment variable (``{name=projects/*}``)
  becomes ``{name}`` with a ``pattern`` for the whole value;
- operationId ``Service_Method`` (``Service_Method2``, ... for additional bindings);
- path parameters, query parameters for the remaining scalar fields (nested ``a.b``,
  repeated -> array; repeated messages and maps are not addressable by query),
  a request body for ``body: "*"`` (minus path-bound fields) or ``body: "field"``;
- 200 with the response message (or its ``response_body`` field) and ``default``
  with grpc-gateway's error body (``google.rpc.Status`` as JSON);
- schemas by full message name in the proto3 JSON mapping.

Response schemas list as ``required`` every field without presence: the gateway
prints unpopulated fields, so those are always there. Request schemas require
nothing. A message used on both sides gets a second schema for requests,
named ``<full name>-Input`` (a hyphen cannot occur in a proto name).

Proto comments are not in the runtime descriptors, so operations carry no summary.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from service.gateway.routes import Route
from service.gateway.template import PathTemplate, Variable

__all__ = ["API_KEY_HEADER", "ERROR_SCHEMA", "OPENAPI_VERSION", "openapi_document"]

OPENAPI_VERSION = "3.0.3"
API_KEY_HEADER = "X-API-Key"
ERROR_SCHEMA = "google.rpc.Status"
_ANY_SCHEMA = "google.protobuf.Any"
_SECURITY_SCHEME = "ApiKeyAuth"
_INPUT_SUFFIX = "-Input"
_JSON = "application/json"
_OPENAPI_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
_BYTES = {"type": "string", "format": "byte"}

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: _BYTES,
}

# Well-known types whose JSON form is a scalar: usable as query parameters too.
_SCALAR_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": _BYTES,
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    **_SCALAR_WELL_KNOWN,
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
}

# Messages whose fields a query string cannot address (JSON objects, lists, any value).
_NOT_IN_QUERY = frozenset(_WELL_KNOWN) - frozenset(_SCALAR_WELL_KNOWN) | {_ANY_SCHEMA}

_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A gRPC status as JSON: the code number, its message and its details.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"$ref": f"#/components/schemas/{_ANY_SCHEMA}"}},
    },
    "required": ["code", "message", "details"],
}
_ANY: dict[str, Any] = {
    "type": "object",
    "description": "Any message as JSON: its type URL in '@type' beside its fields.",
    "properties": {"@type": {"type": "string"}},
    "required": ["@type"],
    "additionalProperties": True,
}


def openapi_document(routes: Sequence[Route], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document for ``routes``; the first route wins a (path, method) clash."""
    builder = _Builder(routes)
    paths: dict[str, dict[str, Any]] = {}
    bindings: Counter[str] = Counter()
    tags: dict[str, None] = {}
    for route in routes:
        method = route.http_method.lower()
        if method not in _OPENAPI_METHODS:
            continue  # a custom verb OpenAPI cannot express
        bindings[route.method.full_name] += 1
        operations = paths.setdefault(_openapi_path(route.template, route), {})
        if method in operations:
            continue  # the route table serves the first match as well
        n = bindings[route.method.full_name]
        operation_id = f"{route.method.containing_service.name}_{route.method.name}"
        operations[method] = builder.operation(route, operation_id + (str(n) if n > 1 else ""))
        tags[route.method.containing_service.name] = None
    schemas = builder.schemas | {ERROR_SCHEMA: _STATUS_SCHEMA, _ANY_SCHEMA: _ANY}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                _SECURITY_SCHEME: {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
        },
        "security": [{_SECURITY_SCHEME: []}],
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _openapi_path(template: PathTemplate, route: Route) -> str:
    parts = [
        "{" + _parameter_name(route, s) + "}" if isinstance(s, Variable) else s
        for s in template.segments
    ]
    return "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")


def _parameter_name(route: Route, variable: Variable) -> str:
    return ".".join(f.json_name for f in _field_path(route.method.input_type, variable.field_path))


def _field_path(message: Descriptor, path: Sequence[str]) -> list[FieldDescriptor]:
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in path:
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None:
            raise ValueError(f"{message.full_name} has no field {'.'.join(path)}")
        fields.append(field)
        current = field.message_type
    return fields


def _segments_pattern(segments: Sequence[str]) -> str:
    parts = ["[^/]+" if s == "*" else ".+" if s == "**" else re.escape(s) for s in segments]
    return "^" + "/".join(parts) + "$"


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and bool(message.GetOptions().map_entry)


def _reachable(message: Descriptor, found: set[str]) -> None:
    if message.full_name in found or message.full_name in _WELL_KNOWN:
        return
    found.add(message.full_name)
    for field in message.fields:
        if field.message_type is not None:
            _reachable(field.message_type, found)


class _Builder:
    """Schemas (in ``schemas``) and operations for one document."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        self._in_responses: set[str] = set()
        for route in routes:
            _reachable(route.method.output_type, self._in_responses)

    def operation(self, route: Route, operation_id: str) -> dict[str, Any]:
        request = route.method.input_type
        bound = {v.field_path for v in route.template.variables}
        parameters = [self._path_parameter(route, v) for v in route.template.variables]
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [route.method.containing_service.name],
        }
        if route.body == "*":
            operation["requestBody"] = self._body_of_request(request, bound)
        else:
            if route.body:
                field = _field_path(request, (route.body,))[0]
                operation["requestBody"] = {
                    "required": True,
                    "content": {_JSON: {"schema": self._field_schema(field, response=False)}},
                }
                bound.add((route.body,))
            parameters.extend(
                self._query_parameters(request, bound, (), (), frozenset({request.full_name}))
            )
        if parameters:
            operation["parameters"] = parameters
        operation["responses"] = {
            "200": {
                "description": "A successful response.",
                "content": {_JSON: {"schema": self._response_schema(route)}},
            },
            "default": {
                "description": "An unexpected error response.",
                "content": {_JSON: {"schema": self._error_schema(route)}},
            },
        }
        return operation

    @staticmethod
    def _error_schema(route: Route) -> dict[str, Any]:
        if not route.server_streaming:
            return _ref(ERROR_SCHEMA)
        # A stream that fails before its first message is still a stream, as grpc-gateway
        # sends it: the status's HTTP code, and one {"error": ...} line.
        return {
            "type": "object",
            "title": "Stream error",
            "required": ["error"],
            "properties": {"error": _ref(ERROR_SCHEMA)},
        }

    def _response_schema(self, route: Route) -> dict[str, Any]:
        response = route.method.output_type
        if route.response_body:
            field = _field_path(response, (route.response_body,))[0]
            schema = self._field_schema(field, response=True)
        else:
            schema = self._message_schema_ref(response, response=True)
        if not route.server_streaming:
            return schema
        # grpc-gateway streams newline-delimited {"result": ...} / {"error": ...} objects.
        return {
            "type": "object",
            "title": f"Stream result of {response.full_name}",
            "properties": {"result": schema, "error": _ref(ERROR_SCHEMA)},
        }

    def _body_of_request(self, request: Descriptor, bound: set[tuple[str, ...]]) -> dict[str, Any]:
        schema = self._message_schema_ref(request, response=False)
        top_level = {path[0] for path in bound if len(path) == 1}
        if top_level and "$ref" in schema:
            # The path carries these fields: the body holds the others (as grpc-gateway documents).
            component = self.schemas[schema["$ref"].rsplit("/", 1)[1]]
            by_name = {f.json_name: f.name for f in request.fields}
            properties = {
                name: value
                for name, value in component["properties"].items()
                if by_name[name] not in top_level
            }
            schema = {"type": "object", "properties": properties}
        return {"content": {_JSON: {"schema": schema}}}

    def _path_parameter(self, route: Route, variable: Variable) -> dict[str, Any]:
        field = _field_path(route.method.input_type, variable.field_path)[-1]
        schema = self._value_schema(field, response=False)
        if variable.segments != ("*",) and "$ref" not in schema:
            schema = {**schema, "pattern": _segments_pattern(variable.segments)}
        return {
            "name": _parameter_name(route, variable),
            "in": "path",
            "required": True,
            "schema": schema,
        }

    def _query_parameters(
        self,
        message: Descriptor,
        bound: set[tuple[str, ...]],
        proto_path: tuple[str, ...],
        json_path: tuple[str, ...],
        seen: frozenset[str],
    ) -> Iterator[dict[str, Any]]:
        for field in message.fields:
            path, name = (*proto_path, field.name), (*json_path, field.json_name)
            if path in bound or _is_map(field):
                continue
            nested = field.message_type
            if nested is None or nested.full_name in _SCALAR_WELL_KNOWN:
                yield {"name": ".".join(name), "in": "query", "schema": self._field_schema(field)}
            elif not field.is_repeated and nested.full_name not in _NOT_IN_QUERY | seen:
                # A message nested in itself is not followed: its fields are reached once.
                yield from self._query_parameters(
                    nested, bound, path, name, seen | {nested.full_name}
                )

    def _field_schema(self, field: FieldDescriptor, *, response: bool = False) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value = entry.fields_by_name["value"]
            return {
                "type": "object",
                "additionalProperties": self._value_schema(value, response=response),
            }
        schema = self._value_schema(field, response=response)
        return {"type": "array", "items": schema} if field.is_repeated else schema

    def _value_schema(self, field: FieldDescriptor, *, response: bool) -> dict[str, Any]:
        if field.message_type is not None:
            return self._message_schema_ref(field.message_type, response=response)
        if field.enum_type is not None:
            return self._enum_ref(field.enum_type)
        return dict(_SCALARS[field.type])

    def _message_schema_ref(self, message: Descriptor, *, response: bool) -> dict[str, Any]:
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if message.full_name == _ANY_SCHEMA:
            return _ref(_ANY_SCHEMA)
        name = message.full_name
        if not response and name in self._in_responses:
            name += _INPUT_SUFFIX
        if name not in self.schemas:
            schema: dict[str, Any] = {"type": "object", "properties": {}}
            self.schemas[name] = schema  # before the fields: a message may contain itself
            for field in message.fields:
                schema["properties"][field.json_name] = self._field_schema(field, response=response)
            required = [f.json_name for f in message.fields if not f.has_presence]
            if response and required:
                schema["required"] = required
        return _ref(name)

    def _enum_ref(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name == "google.protobuf.NullValue":
            return {}  # JSON null
        if enum.full_name not in self.schemas:
            names = list(dict.fromkeys(v.name for v in enum.values))
            self.schemas[enum.full_name] = {"type": "string", "enum": names}
        return _ref(enum.full_name)
