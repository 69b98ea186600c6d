"""The shim's JSON view of a message is exactly json_format's, key order included."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from balances.v1 import balances_pb2, wallets_pb2, webhooks_pb2
from service.gateway.jsonview import message_to_dict
from tests.support.gwroute import gwroute_modules

_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _types() -> list[Descriptor]:
    files = [balances_pb2.DESCRIPTOR, wallets_pb2.DESCRIPTOR, webhooks_pb2.DESCRIPTOR]
    files.append(gwroute_modules()[0].DESCRIPTOR)
    return [message for file in files for message in file.message_types_by_name.values()]


TYPES = _types()


def _scalar(draw: Any, field: FieldDescriptor) -> Any:
    kind = field.type
    if kind in _INTS:
        low, high = _INTS[kind]
        return draw(st.integers(low, high))
    if kind == FieldDescriptor.TYPE_STRING:
        return draw(st.text(max_size=8))
    if kind == FieldDescriptor.TYPE_BYTES:
        return draw(st.binary(max_size=8))
    if kind == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return draw(st.sampled_from(numbers) | st.integers(-5, 50))  # unknown values too
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return draw(st.floats(allow_nan=False, width=32))
    raise AssertionError(kind)


def _fill(draw: Any, message: Message, depth: int) -> None:
    for field in message.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue  # json_format's job: not what this test is about
            if field.message_type.full_name == "google.protobuf.Timestamp":
                stamps = [getattr(message, field.name)] if not field.is_repeated else []
                if field.is_repeated:
                    stamps = [getattr(message, field.name).add() for _ in range(2)]
                for stamp in stamps:
                    stamp.FromSeconds(draw(st.integers(0, 2**33)))
                continue
            if depth > 2 or field.message_type.full_name.startswith("google."):
                continue
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 2))):
                    _fill(draw, getattr(message, field.name).add(), depth + 1)
            else:
                getattr(message, field.name).SetInParent()
                _fill(draw, getattr(message, field.name), depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(
                _scalar(draw, field) for _ in range(draw(st.integers(0, 3)))
            )
        else:
            setattr(message, field.name, _scalar(draw, field))


@st.composite
def messages(draw: Any) -> Message:
    descriptor = draw(st.sampled_from(TYPES))
    message = message_factory.GetMessageClass(descriptor)()
    _fill(draw, message, 0)
    return message


@settings(max_examples=600, deadline=None)
@given(messages())
def test_same_object_and_same_json_text_as_json_format(message: Message) -> None:
    expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    got = message_to_dict(message)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # key order: the bytes the client gets


def test_every_api_response_type_gets_a_plan_of_its_own() -> None:
    """The shim's responses take the fast path: none is handed back to json_format."""
    from service.gateway import jsonview

    for descriptor in TYPES:
        message_to_dict(message_factory.GetMessageClass(descriptor)())
    for name in ("GetWalletBalanceResponse", "GetCustomerBalancesResponse"):
        assert jsonview._plans[f"balances.v1.{name}"] is not None
