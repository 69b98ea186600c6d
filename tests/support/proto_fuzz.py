"""Hypothesis strategies for hostile protobuf requests, built from message descriptors.

``raw_messages`` gives request bytes: random bytes, valid messages (fields at
any value their type allows, out-of-range timestamps included), and those
truncated or mutated, fields on the wrong wire type, length prefixes far past
the end, invalid UTF-8 in string fields, bad tags, overlong varints and deeply
nested groups.  ``json_values`` gives what a REST body might hold.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

__all__ = ["decodes", "json_values", "messages", "raw_messages"]

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_INT32 = st.integers(-(2**31), 2**31 - 1)
_UINT32 = st.integers(0, 2**32 - 1)
_INT64 = st.integers(-(2**63), 2**63 - 1)
_UINT64 = st.integers(0, 2**64 - 1)
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_STRING: st.text(max_size=80),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=80),
    FieldDescriptor.TYPE_ENUM: _INT32,  # proto3 enums are open: unknown numbers are valid
}
_WIRE_TYPE = {
    FieldDescriptor.TYPE_DOUBLE: _I64,
    FieldDescriptor.TYPE_FIXED64: _I64,
    FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_FLOAT: _I32,
    FieldDescriptor.TYPE_FIXED32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32,
    FieldDescriptor.TYPE_STRING: _LEN,
    FieldDescriptor.TYPE_BYTES: _LEN,
    FieldDescriptor.TYPE_MESSAGE: _LEN,
}


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as two's complement, as protobuf does
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(field_number: int, wire_type: int) -> bytes:
    return varint(field_number << 3 | wire_type)


def decodes(message_class: type[Message], raw: bytes) -> bool:
    """Whether this process's protobuf runtime parses ``raw`` as ``message_class``."""
    try:
        message_class.FromString(raw)
    except DecodeError:
        return False
    return True


def messages(
    descriptor: Descriptor, depth: int = 0, *, json_safe: bool = False
) -> st.SearchStrategy[Message]:
    """Valid messages of ``descriptor``: any subset of fields, any value of each type.

    ``json_safe``: Timestamps only within what proto3 JSON can print (years 1-9999);
    otherwise any int64 seconds and int32 nanos, as the wire allows.
    """
    message_class = message_factory.GetMessageClass(descriptor)
    if json_safe and descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(
            message_class,
            seconds=st.integers(-62135596800, 253402300799),
            nanos=st.integers(0, 999_999_999),
        )
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value: st.SearchStrategy[Any] = messages(
                field.message_type, depth + 1, json_safe=json_safe
            )
        elif field.type == FieldDescriptor.TYPE_GROUP:
            continue
        else:
            value = _SCALARS[field.type]
        optional[field.name] = st.lists(value, max_size=3) if field.is_repeated else value

    def build(values: dict[str, Any]) -> Message:
        message = message_class()
        for name, value in values.items():
            target: Any = getattr(message, name)
            if isinstance(value, list):
                if value and isinstance(value[0], Message):
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif isinstance(value, Message):
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


def raw_messages(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Request bytes for an RPC taking ``descriptor``, most of them hostile."""
    valid = messages(descriptor).map(lambda m: m.SerializeToString())
    numbers = [f.number for f in descriptor.fields] or [1]
    field_numbers = st.one_of(st.sampled_from(numbers), st.integers(1, 2**29 - 1))
    strings = [f.number for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]
    hostile = [
        st.binary(max_size=200),
        valid,
        valid.flatmap(_truncated),
        valid.flatmap(_mutated),
        st.builds(_wrong_wire_type, st.sampled_from(list(descriptor.fields) or [None])),
        st.builds(
            lambda n, length, tail: tag(n, _LEN) + varint(length) + tail,
            field_numbers,
            st.one_of(st.integers(201, 2**32), st.integers(2**32, 2**64 - 1)),
            st.binary(max_size=200),
        ),
        st.builds(
            lambda n, wire: tag(n, wire) + b"\x01",
            st.sampled_from([0, 2**29, 2**31, 2**32 - 1]),
            st.sampled_from([_VARINT, _LEN, 6, 7]),
        ),
        st.builds(lambda n: tag(n, _VARINT) + b"\xff" * 10 + b"\x01", field_numbers),
        st.builds(
            lambda n, depth: tag(n, _SGROUP) * depth + tag(n, _EGROUP) * depth,
            field_numbers,
            st.integers(1, 2000),
        ),
        st.builds(lambda prefix, extra: prefix + extra, valid, st.binary(min_size=1, max_size=40)),
    ]
    if strings:
        hostile.append(
            st.builds(
                lambda n, text: tag(n, _LEN) + varint(len(text)) + text,
                st.sampled_from(strings),
                st.sampled_from(
                    [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\xfe", b"\xf4\x90\x80\x80"]
                ),
            )
        )
    return st.one_of(hostile)


def _truncated(raw: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, max(len(raw) - 1, 0)).map(lambda end: raw[:end])


def _mutated(raw: bytes) -> st.SearchStrategy[bytes]:
    edits = st.lists(
        st.tuples(st.integers(0, 1 << 16), st.sampled_from("fid"), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    )

    def apply(steps: list[tuple[int, str, int]]) -> bytes:
        data = bytearray(raw)
        for where, kind, byte in steps:
            at = where % (len(data) + 1)
            if kind == "i" or not data:
                data.insert(at, byte)
            elif kind == "f":
                data[at % len(data)] ^= byte or 0x80
            else:
                del data[at % len(data)]
        return bytes(data)

    return edits.map(apply)


def _wrong_wire_type(field: FieldDescriptor | None) -> bytes:
    """Every wire type the field does not have, one after another, each with a payload."""
    number = field.number if field is not None else 1
    right = _WIRE_TYPE.get(field.type, _VARINT) if field is not None else _VARINT
    payloads = {
        _VARINT: varint(2**63 + 5),
        _I64: b"\x01" * 8,
        _LEN: varint(3) + b"abc",
        _I32: b"\x01" * 4,
    }
    return b"".join(tag(number, w) + p for w, p in payloads.items() if w != right)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value, with numbers at and beyond 64-bit limits."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=12), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )
