"""HTTP request -> protobuf request message, following grpc-gateway's rules.

* Path variables are percent-decoded into their (possibly nested) fields.
* ``body: "*"`` parses the JSON body into the whole message; ``body: "field"``
  into that field; unknown JSON fields are ignored.
* Query parameters fill the remaining fields: proto or lowerCamelCase JSON
  names, nested as ``a.b``, repeated fields by repeating the parameter.  A
  query parameter naming a path variable (or a field the body fills) is
  ignored: it cannot override them.  Unknown parameters are ignored.  A
  single-valued field given twice, or a value that does not parse, is an error.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from service.bounded_json import loads_bounded
from service.gateway.errors import GatewayError
from service.gateway.routes import RouteMatch

__all__ = ["build_request"]

_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: _INT32, FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32, FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32, FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64, FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64, FieldDescriptor.TYPE_FIXED64: _UINT64,
}  # fmt: skip
_FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}


def _bad(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message)


def build_request(
    found: RouteMatch,
    query: Iterable[tuple[str, str]],
    body: bytes | None,
) -> Message:
    route, variables = found.route, found.variables
    message = route.request_class()
    body_fields: set[str] = set()
    if route.body:
        body_fields = _fill_body(message, route.body, body or b"")
    for path, value in variables.items():
        if value == "":
            raise _bad(f"path variable {path} is empty")
        _set_path(message, path.split("."), [value], replace=True)
    if route.body == "*":
        return message  # everything not in the path comes from the body
    taken = {path.split(".")[0] for path in variables} | body_fields
    grouped: dict[tuple[str, ...], list[str]] = {}
    for name, value in query:
        resolved = _resolve(message.DESCRIPTOR, name.split("."))
        if resolved is None or resolved[0] in taken:
            continue
        grouped.setdefault(resolved, []).append(value)
    for field_path, values in grouped.items():
        _set_path(message, list(field_path), values, replace=False)
    return message


def _fill_body(message: Message, body_field: str, raw: bytes) -> set[str]:
    try:
        data: Any = loads_bounded(raw) if raw.strip() else {}
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, TooDeep
        raise _bad(f"request body is not valid JSON: {exc}") from None
    if body_field == "*":
        if not isinstance(data, dict):
            raise _bad("request body must be a JSON object")
    else:
        field = message.DESCRIPTOR.fields_by_name[body_field]
        data = {field.json_name: data}
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True, max_recursion_depth=32)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        # ParseDict raises more than ParseError on some shapes (e.g. null for a message).
        raise _bad(f"request body does not fit {message.DESCRIPTOR.name}: {exc}") from None
    return {body_field} if body_field != "*" else set(message.DESCRIPTOR.fields_by_name)


def _resolve(descriptor: Any, names: list[str]) -> tuple[str, ...] | None:
    """Proto field names for a dotted query name given in proto or JSON spelling."""
    resolved: list[str] = []
    current: Any = descriptor
    for i, name in enumerate(names):
        if current is None:
            return None
        field = current.fields_by_name.get(name) or next(
            (f for f in current.fields if f.json_name == name), None
        )
        if field is None:
            return None
        resolved.append(field.name)
        is_last = i == len(names) - 1
        if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_leaf_message(field):
            if is_last:
                return None  # a whole message cannot come from one query value
            current = field.message_type
        elif not is_last:
            return None
    return tuple(resolved)


def _is_leaf_message(field: Any) -> bool:
    """Well-known types that take one JSON scalar (Timestamp, Duration, wrappers...)."""
    return field.message_type.full_name.startswith("google.protobuf.") and (
        field.message_type.full_name not in ("google.protobuf.Struct", "google.protobuf.Any")
    )


def _set_path(message: Message, path: list[str], values: list[str], *, replace: bool) -> None:
    target = message
    for name in path[:-1]:
        target = getattr(target, name)
    field: Any = target.DESCRIPTOR.fields_by_name[path[-1]]
    dotted = ".".join(path)
    if field.is_repeated:
        container = getattr(target, field.name)
        if replace:
            del container[:]
        for value in values:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _parse_leaf_message(container.add(), value, dotted)
            else:
                container.append(_scalar(field, value, dotted))
        return
    if len(values) > 1:
        raise _bad(f"{dotted} takes one value, got {len(values)}")
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _parse_leaf_message(getattr(target, field.name), values[0], dotted)
    else:
        setattr(target, field.name, _scalar(field, values[0], dotted))


def _parse_leaf_message(message: Message, value: str, dotted: str) -> None:
    try:
        json_format.Parse(json.dumps(value), message)
    except json_format.ParseError as exc:
        raise _bad(f"{dotted}: {exc}") from None


def _scalar(field: Any, value: str, dotted: str) -> Any:
    try:
        if field.type in _INT_RANGES:
            low, high = _INT_RANGES[field.type]
            number = int(value, 10)
            if not low <= number <= high:
                raise ValueError(value)
            return number
        if field.type in _FLOATS:
            return float(value)
        if field.type == FieldDescriptor.TYPE_BOOL:
            if value not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value in ("true", "1")
        if field.type == FieldDescriptor.TYPE_ENUM:
            enum_value = field.enum_type.values_by_name.get(value)
            if enum_value is None and value.lstrip("-").isdigit():
                enum_value = field.enum_type.values_by_number.get(int(value))
            if enum_value is None:
                raise ValueError(value)
            return enum_value.number
        if field.type == FieldDescriptor.TYPE_BYTES:
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return value
    except (ValueError, binascii.Error):
        raise _bad(f"{dotted}: {value[:64]!r} is not a valid {_type_name(field)}") from None


def _type_name(field: Any) -> str:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return f"{field.enum_type.name} value"
    names = {FieldDescriptor.TYPE_BOOL: "boolean", FieldDescriptor.TYPE_BYTES: "base64 value"}
    if field.type in _INT_RANGES:
        return "integer in range"
    if field.type in _FLOATS:
        return "number"
    return names.get(field.type, "value")
