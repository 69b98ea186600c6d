"""HTTP request -> protobuf request message, as grpc-gateway v2's generated handlers do it.

* The JSON body is read first (``body: "*"`` into the whole message, ``body:
  "field"`` into that field) by protojson's rules: the first JSON value only
  (bytes after it are ignored, as Go's ``json.Decoder`` does), an empty body is
  an empty message, unknown fields are ignored, a known field or map key given
  twice is an error.
* Path variables then set their fields (over the body's values), parsed as
  grpc-gateway's ``runtime.Int32`` & co. do (integers in Go syntax: ``0x1f``).
* Query parameters fill the other fields (none when ``body: "*"``), as
  grpc-gateway's ``DefaultQueryParser``: proto or lowerCamelCase names, nested
  as ``a.b``, repeated fields by repetition, map entries as ``m[key]=value``.
  A parameter naming a path variable or the body field (or a field below them)
  is ignored, so is an unknown one.  Values parse as Go's ``strconv`` would
  (``true``/``T``/``1``..., base-10 integers, enum names or numbers); a value that
  does not parse, a single-valued field given twice under one name, a message
  field given a value, or a path through a non-message field is an error.
* A malformed query string (a bad ``%`` escape, a ``;``) is an error, but only
  for a route that reads query parameters; the others never parse it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import json_format, wrappers_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from service.api.status import Reason
from service.bounded_json import MAX_DEPTH, loads_bounded
from service.errors import TooDeep
from service.gateway.errors import GatewayError
from service.gateway.routes import RouteMatch

__all__ = ["build_request", "parse_query"]

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
# strconv.ParseBool's words.
_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
# strconv.ParseInt(s, 10, n) / ParseUint: ASCII digits, a sign only when signed.
_SIGNED = re.compile(r"[+-]?[0-9]+")
_UNSIGNED = re.compile(r"[0-9]+")
# strconv.ParseInt(s, 0, n), for path variables: 0x/0o/0b/0 prefixes, "_" between digits.
_GO_INT = re.compile(
    r"(?P<sign>[+-]?)(?:0[xX](?P<hex>_?[0-9a-fA-F](?:_?[0-9a-fA-F])*)"
    r"|0[oO](?P<oct>_?[0-7](?:_?[0-7])*)|0[bB](?P<bin>_?[01](?:_?[01])*)"
    r"|(?P<legacy_oct>0(?:_?[0-7])+)|(?P<dec>[1-9](?:_?[0-9])*|0))"
)
# strconv.ParseFloat's decimal forms (hex floats are not accepted here: see the README).
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE
)
_FLOAT32_MAX = 3.4028234663852886e38
_MAP_KEY = re.compile(r"^(.*)\[(.*)\]$", re.DOTALL)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _bad(message: str, field: str = "") -> GatewayError:
    """INVALID_ARGUMENT naming ``field`` (rich details); none: the whole request is malformed."""
    reason = None if field else Reason.MALFORMED_REQUEST
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message, field=field, reason=reason)


def build_request(
    found: RouteMatch,
    query: Iterable[tuple[str, str]],
    body: bytes | None,
) -> Message:
    """The request message; ``query`` is decoded pairs in order (see ``parse_query``)."""
    route, variables = found.route, found.variables
    message = route.request_class()
    if route.body:
        _fill_body(message, route.body, body or b"")
    for path, value in variables.items():
        if value == "":
            raise _bad(f"path variable {path} is empty", path)
        _set_path_variable(message, path, value)
    if not route.reads_query:
        return message
    taken = [tuple(path.split(".")) for path in variables]
    if route.body:
        taken.append((route.body,))
    grouped: dict[str, list[str]] = {}  # url.Values: one list per name as given
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    for name, values in grouped.items():
        _set_query_field(message, name, values, taken)
    return message


def parse_query(raw: str) -> list[tuple[str, str]]:
    """Go's ``url.ParseQuery``: split at ``&``, ``+`` is a space; ``;`` or a bad escape: 400."""
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if ";" in part:
            raise _bad("invalid semicolon separator in query")
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((_query_unescape(key), _query_unescape(value)))
    return pairs


def _query_unescape(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    out = bytearray()
    i = 0
    raw = text.encode("utf-8")
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # %
            pair = raw[i + 1 : i + 3]
            if len(pair) < 2 or not all(chr(b) in "0123456789abcdefABCDEF" for b in pair):
                shown = raw[i : i + 3].decode("utf-8", "replace")
                raise _bad(f'invalid URL escape "{shown}"')
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(0x20 if byte == 0x2B else byte)
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("query parameters are not valid UTF-8") from None


# --- the body ---------------------------------------------------------------------------


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers the keys it was given more than once."""

    duplicates: set[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object(pairs)
    result.duplicates = set()
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                result.duplicates.add(key)
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_no_constant)


def _fill_body(message: Message, body_field: str, raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
        start = len(text) - len(text.lstrip(" \t\r\n"))
        if start == len(text):
            return  # io.EOF: an empty body is an empty message, as in grpc-gateway
        if text.count("[") + text.count("{") > MAX_DEPTH:
            try:
                loads_bounded(text)  # only for its depth check, before the C decoder
            except TooDeep:
                raise
            except ValueError:  # trailing bytes, or a syntax error reported below
                pass
        data, _end = _DECODER.raw_decode(text, start)  # the first value; the rest ignored
    except TooDeep as exc:
        raise _bad(f"request body is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _bad(f"request body is not valid JSON: {exc}") from None
    if body_field == "*":
        if not isinstance(data, dict):
            raise _bad("request body must be a JSON object")
        _check_duplicates(message.DESCRIPTOR, data)
    else:
        field = message.DESCRIPTOR.fields_by_name[body_field]
        _check_value_duplicates(field, data)
        data = {field.json_name: data}
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True, max_recursion_depth=32)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        # ParseDict raises more than ParseError on some shapes (e.g. null for a message).
        raise _bad(f"request body does not fit {message.DESCRIPTOR.name}: {exc}") from None


def _check_duplicates(descriptor: Any, data: dict[str, Any]) -> None:
    """protojson refuses a known field (or a map key) given twice; unknown ones it skips."""
    duplicates: set[str] = getattr(data, "duplicates", set())
    for key, value in data.items():
        field = _field(descriptor, key)
        if field is None:
            continue
        if key in duplicates:
            raise _bad(f"request body: duplicate field {key!r}")
        _check_value_duplicates(field, value)


def _check_value_duplicates(field: Any, value: Any) -> None:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return
    entry = field.message_type
    if entry.GetOptions().map_entry:
        if isinstance(value, dict):
            if getattr(value, "duplicates", set()):
                raise _bad(f"request body: duplicate map key in {field.name!r}")
            value_field = entry.fields_by_name["value"]
            for item in value.values():
                _check_value_duplicates(value_field, item)
        return
    items = value if field.is_repeated and isinstance(value, list) else [value]
    for item in items:
        if entry.full_name.startswith("google.protobuf."):
            _check_any_duplicates(item)  # Struct, Value, Any: every object counts
        elif isinstance(item, dict):
            _check_duplicates(entry, item)


def _check_any_duplicates(value: Any) -> None:
    if isinstance(value, dict):
        if getattr(value, "duplicates", set()):
            raise _bad("request body: duplicate key in an object")
        for item in value.values():
            _check_any_duplicates(item)
    elif isinstance(value, list):
        for item in value:
            _check_any_duplicates(item)


def _field(descriptor: Any, name: str) -> Any:
    """A field by proto name, else by JSON name (protoreflect's ByTextName/ByJSONName)."""
    field = descriptor.fields_by_name.get(name)
    if field is None:
        field = next((f for f in descriptor.fields if f.json_name == name), None)
    return field


# --- path variables ---------------------------------------------------------------------


def _set_path_variable(message: Message, path: str, value: str) -> None:
    names = path.split(".")
    target = message
    for name in names[:-1]:
        target = getattr(target, name)
    field: Any = target.DESCRIPTOR.fields_by_name[names[-1]]
    try:
        if field.is_repeated:  # grpc-gateway splits a repeated path variable at ","
            container = getattr(target, field.name)
            del container[:]
            for item in value.split(","):
                container.append(_path_scalar(field, item))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _set_message(getattr(target, field.name), field, value)
        else:
            setattr(target, field.name, _path_scalar(field, value))
    except (ValueError, binascii.Error) as exc:
        raise _bad(f"type mismatch, parameter: {path}, error: {exc}", path) from None


def _path_scalar(field: Any, value: str) -> Any:
    """grpc-gateway's runtime.Int32/Bool/Enum/...: integers in Go syntax (base 0)."""
    if field.type in _INT_RANGES:
        return _in_range(field, _go_int(value))
    if field.type == FieldDescriptor.TYPE_ENUM:
        found = field.enum_type.values_by_name.get(value)
        if found is None:
            number = _in_range_of(_INT32, _go_int(value), value)
            found = field.enum_type.values_by_number.get(number)
        if found is None:
            raise ValueError(f"{value} is not valid")
        return found.number
    return _scalar(field, value)


def _go_int(value: str) -> int:
    match = _GO_INT.fullmatch(value)
    if match is None:
        raise ValueError(f'parsing "{value}": invalid syntax')
    sign = -1 if match["sign"] == "-" else 1
    for group, base in (("hex", 16), ("oct", 8), ("bin", 2), ("legacy_oct", 8), ("dec", 10)):
        digits = match[group]
        if digits is not None:
            return sign * int(digits.replace("_", "") or "0", base)
    raise ValueError(f'parsing "{value}": invalid syntax')  # pragma: no cover - regex covers


# --- query parameters -------------------------------------------------------------------


def _set_query_field(
    message: Message, name: str, values: list[str], taken: list[tuple[str, ...]]
) -> None:
    match = _MAP_KEY.match(name)
    if match:
        name, values = match[1], [match[2], *values]
    names = name.split(".")
    normalized = _normalize(message.DESCRIPTOR, names)
    if any(normalized[: len(prefix)] == prefix for prefix in taken):
        return
    target: Any = message
    field: Any = None
    for i, part in enumerate(names):
        field = _field(target.DESCRIPTOR, part)
        if field is None:
            return  # an unknown parameter: ignored
        oneof = field.containing_oneof
        if oneof is not None and not _is_synthetic(oneof):
            current = target.WhichOneof(oneof.name)
            if current is not None and (
                field.type != FieldDescriptor.TYPE_MESSAGE or current != field.name
            ):
                raise _bad(f'field already set for oneof "{oneof.name}"')
        if i == len(names) - 1:
            break
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            raise _bad(f'invalid path: "{part}" is not a message')
        target = getattr(target, field.name)
        target.SetInParent()  # as protoreflect's Mutable: the parent exists from now on
    try:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _set_map_entry(target, field, values)
        elif field.is_repeated:
            container = getattr(target, field.name)
            for value in values:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    _set_message(container.add(), field, value)
                else:
                    container.append(_scalar(field, value))
        elif len(values) > 1:
            raise _bad(
                f'too many values for field "{field.name}": {", ".join(values)[:200]}', field.name
            )
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _set_message(getattr(target, field.name), field, values[0])
        else:
            setattr(target, field.name, _scalar(field, values[0]))
    except (ValueError, binascii.Error) as exc:
        raise _bad(f'parsing field "{field.name}": {exc}', field.name) from None


def _normalize(descriptor: Any, names: list[str]) -> tuple[str, ...]:
    """Proto names of a dotted query name, or the name as given when it does not resolve."""
    out: list[str] = []
    current = descriptor
    for i, name in enumerate(names):
        field = _field(current, name) if current is not None else None
        if field is None:
            return tuple(names)
        out.append(field.name)
        if i < len(names) - 1:
            if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
                return tuple(names)
            current = field.message_type
    return tuple(out)


def _is_synthetic(oneof: Any) -> bool:
    return bool(getattr(oneof, "is_synthetic", False)) or (
        len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name
    )


def _set_map_entry(target: Any, field: Any, values: list[str]) -> None:
    if len(values) != 2:
        raise ValueError(f'more than one value provided for key "{values[0]}" in map')
    entry = field.message_type
    key = _scalar(entry.fields_by_name["key"], values[0])
    value_field = entry.fields_by_name["value"]
    container = getattr(target, field.name)
    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
        _set_message(container[key], value_field, values[1])
    else:
        container[key] = _scalar(value_field, values[1])


def _scalar(field: Any, value: str) -> Any:
    """One query value as strconv parses it for the field's kind."""
    kind = field.type
    if kind in _INT_RANGES:
        pattern = _UNSIGNED if _INT_RANGES[kind][0] == 0 else _SIGNED
        if not pattern.fullmatch(value):
            raise ValueError(f'"{value[:64]}" is not a valid integer')
        return _in_range(field, int(value, 10))
    if kind in _FLOATS:
        return _float(value, 32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_BOOL:
        if value not in _BOOLS:
            raise ValueError(f'"{value[:64]}" is not a valid boolean')
        return _BOOLS[value]
    if kind == FieldDescriptor.TYPE_ENUM:
        found = field.enum_type.values_by_name.get(value)
        if found is None and _SIGNED.fullmatch(value):
            found = field.enum_type.values_by_number.get(int(value, 10))
        if found is None:
            raise ValueError(f'"{value[:64]}" is not a valid value')
        return found.number
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes(value)
    return value


def _in_range(field: Any, number: int) -> int:
    return _in_range_of(_INT_RANGES[field.type], number, str(number))


def _in_range_of(bounds: tuple[int, int], number: int, shown: str) -> int:
    low, high = bounds
    if not low <= number <= high:
        raise ValueError(f'"{shown[:64]}" is out of range')
    return number


def _float(value: str, bits: int) -> float:
    if not _FLOAT.fullmatch(value):
        raise ValueError(f'"{value[:64]}" is not a valid number')
    number = float(value)
    limit = _FLOAT32_MAX if bits == 32 else 1.7976931348623157e308
    if math.isfinite(number) and abs(number) > limit:
        raise ValueError(f'"{value[:64]}" is out of range')
    return number


def _bytes(value: str) -> bytes:
    """runtime.Bytes: padded standard base64, else padded URL-safe base64."""
    if len(value) % 4 == 0:
        if _BASE64.fullmatch(value):
            return base64.b64decode(value, validate=True)
        if _BASE64_URL.fullmatch(value):
            return base64.urlsafe_b64decode(value)
    raise ValueError(f'"{value[:64]}" is not padded base64')


# The well-known types a query value may give (runtime.parseMessage); other messages cannot.
def _set_message(target: Any, field: Any, value: str) -> None:
    name = field.message_type.full_name
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        # protojson's forms; for a Duration grpc-gateway takes Go's ("1h30m"): see the README.
        _json_into(target, json.dumps(value))
    elif name == "google.protobuf.FieldMask":
        target.paths.extend(value.split(","))
    elif name in ("google.protobuf.Value", "google.protobuf.Struct"):
        _json_into(target, value)
    elif name in _WRAPPERS:
        inner = target.DESCRIPTOR.fields_by_name["value"]
        target.value = _scalar(inner, value)
    else:
        raise ValueError(f'unsupported message type: "{name}"')


_WRAPPERS = {
    descriptor.full_name
    for descriptor in (
        wrappers_pb2.DoubleValue.DESCRIPTOR, wrappers_pb2.FloatValue.DESCRIPTOR,
        wrappers_pb2.Int64Value.DESCRIPTOR, wrappers_pb2.UInt64Value.DESCRIPTOR,
        wrappers_pb2.Int32Value.DESCRIPTOR, wrappers_pb2.UInt32Value.DESCRIPTOR,
        wrappers_pb2.BoolValue.DESCRIPTOR, wrappers_pb2.StringValue.DESCRIPTOR,
        wrappers_pb2.BytesValue.DESCRIPTOR,
    )
}  # fmt: skip


def _json_into(target: Any, text: str) -> None:
    try:
        json_format.Parse(text, target, max_recursion_depth=MAX_DEPTH)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
