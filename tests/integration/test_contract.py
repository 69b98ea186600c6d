"""Contract checks over a real server, derived from the registered services."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from service.api.services import API_SERVICES
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration]

METHODS = [method for service in API_SERVICES for method in service.methods]


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
async def test_every_rpc_rejects_a_missing_key(stack: Stack, method: MethodDescriptor) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = message_factory.GetMessageClass(method.input_type)()
    response_class = message_factory.GetMessageClass(method.output_type)
    kind = stack.channel.unary_stream if method.server_streaming else stack.channel.unary_unary
    call = kind(
        path,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method.server_streaming:
            async for _ in call(request, timeout=10):
                pass
        else:
            await call(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, path


def test_every_registered_method_is_checked() -> None:
    assert len(METHODS) >= 11
    assert not any(method.client_streaming for method in METHODS)  # would need another call kind
