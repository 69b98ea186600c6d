"""Protobuf message -> the JSON object ``json_format.MessageToDict`` gives, faster.

The shim answers with ``MessageToDict(message, always_print_fields_with_no_presence=True)``;
its printer re-examines every field's type on every call.  Here each message
type's plan is worked out once: a converter per field and the default of each
field without presence.  The output is the same object, key order included
(``ListFields`` order, then the unset fields in descriptor order, as the printer
does).  Whatever a plan does not cover (floats, maps, extensions, well-known
types but Timestamp, Duration and FieldMask, closed enums) is handed to ``json_format``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["message_to_dict"]

Convert = Callable[[Any], Any]

_INT64 = {
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
}  # fmt: skip
_INT32 = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32,
}  # fmt: skip


class _Plan:
    def __init__(
        self, converters: dict[int, tuple[str, Convert, bool]], defaults: list[tuple[str, Any]]
    ) -> None:
        self.converters = converters  # field number -> (JSON name, converter, repeated)
        self.defaults = defaults  # (JSON name, JSON default) of each field without presence


_plans: dict[str, _Plan | None] = {}  # message full name -> plan (None: json_format's job)


def message_to_dict(message: Message) -> Any:
    """``json_format.MessageToDict(message, always_print_fields_with_no_presence=True)``."""
    descriptor: Any = message.DESCRIPTOR
    try:
        plan = _plans[descriptor.full_name]
    except KeyError:
        plan = _plans[descriptor.full_name] = _plan(descriptor)
    if plan is None:
        return _printed(message)
    js: dict[str, Any] = {}
    converters = plan.converters
    for field, value in message.ListFields():
        found = converters.get(field.number)
        if found is None or field.is_extension:
            return _printed(message)
        name, convert, repeated = found
        js[name] = [convert(item) for item in value] if repeated else convert(value)
    for name, default in plan.defaults:
        if name not in js:
            js[name] = [] if default is _EMPTY_LIST else default
    return js


_EMPTY_LIST: Any = object()  # a fresh [] each time: callers may change what they get


def _printed(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _plan(descriptor: Descriptor) -> _Plan | None:
    if descriptor.full_name.startswith("google.protobuf."):
        return None  # well-known types have JSON forms of their own
    converters: dict[int, tuple[str, Convert, bool]] = {}
    defaults: list[tuple[str, Any]] = []
    for field in descriptor.fields:
        convert = _converter(field)
        if convert is None:
            return None
        converters[field.number] = (field.json_name, convert, field.is_repeated)
        if field.has_presence:
            continue
        if field.is_repeated:
            defaults.append((field.json_name, _EMPTY_LIST))
        else:
            defaults.append((field.json_name, convert(field.default_value)))
    return _Plan(converters, defaults)


def _converter(field: Any) -> Convert | None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        message_type = field.message_type
        if message_type.GetOptions().map_entry:
            return None
        if message_type.full_name in _JSON_STRING_TYPES:
            return _json_string
        return message_to_dict
    if kind == FieldDescriptor.TYPE_STRING:
        return _same
    if kind == FieldDescriptor.TYPE_BOOL:
        return bool
    if kind in _INT32:
        return _same
    if kind in _INT64:
        return str
    if kind == FieldDescriptor.TYPE_BYTES:
        return _base64
    if kind == FieldDescriptor.TYPE_ENUM:
        if field.enum_type.full_name == "google.protobuf.NullValue":
            return None
        names = {number: value.name for number, value in field.enum_type.values_by_number.items()}
        if field.enum_type.is_closed or any(v.has_options for v in field.enum_type.values):
            return None  # unknown values raise there; value options may rename values
        return lambda number: names.get(number, number)
    return None  # float, double, groups: json_format's


# Well-known types json_format prints with their own ToJsonString().
_JSON_STRING_TYPES = frozenset(
    ("google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask")
)


def _json_string(message: Any) -> Any:
    return message.ToJsonString()


def _same(value: Any) -> Any:
    return value


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")
