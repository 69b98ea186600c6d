"""Hostile bytes at every RPC the server serves, over a real socket, with and without a key.

The RPCs are those the server itself lists through reflection (the API
services, health, reflection), so a new RPC is fuzzed with no change here.
Requests are raw bytes (``tests.support.proto_fuzz``) sent on a channel with
no serializer.  Whatever arrives, the status is never UNKNOWN, INTERNAL or
DATA_LOSS; bytes that do not decode are INVALID_ARGUMENT with the one fixed
message, with or without an API key (decoding comes before authentication);
and nothing the server logs holds a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import HealthCheck, given, settings

from balances.v1 import webhooks_pb2, webhooks_pb2_grpc
from service.api.services import API_SERVICES
from service.errors import UndecodableRequest
from tests.support.proto_fuzz import decodes, raw_messages
from tests.support.stack import Stack
from tests.support.tenancy_kit import captured_logs

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
UNDECODABLE = str(UndecodableRequest())
CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Rpc:
    path: str
    request_class: type[Message]
    client_streaming: bool
    server_streaming: bool

    @classmethod
    def of(cls, method: MethodDescriptor) -> Rpc:
        return cls(
            f"/{method.containing_service.full_name}/{method.name}",
            message_factory.GetMessageClass(method.input_type),
            bool(method.client_streaming),
            bool(method.server_streaming),
        )


def served_rpcs(channel: grpc.Channel) -> list[Rpc]:
    """Every method of every service the server lists through reflection."""
    names = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {s.full_name for s in API_SERVICES} <= set(names), names
    pool = descriptor_pool.Default()
    return [Rpc.of(m) for name in names for m in pool.FindServiceByName(name).methods]


def call(
    channel: grpc.Channel, rpc: Rpc, raw: bytes, metadata: tuple[tuple[str, str], ...]
) -> grpc.RpcError | None:
    """One raw call; a stream is read for one message, then cancelled.  The error, if any."""
    try:
        if not rpc.server_streaming:
            channel.unary_unary(rpc.path)(raw, metadata=metadata, timeout=CALL_TIMEOUT)
            return None
        if rpc.client_streaming:
            stream = channel.stream_stream(rpc.path)(
                iter([raw]), metadata=metadata, timeout=CALL_TIMEOUT
            )
        else:
            stream = channel.unary_stream(rpc.path)(raw, metadata=metadata, timeout=CALL_TIMEOUT)
        try:
            next(stream, None)
        finally:
            stream.cancel()
    except grpc.RpcError as error:
        return error
    return None


def fuzz_every_rpc(target: str, api_key: str, examples_per_rpc: int) -> int:
    """Hypothesis over each served RPC, each example with and without the key (a worker
    thread's blocking channel: the server runs on the test's event loop).  Calls made."""
    channel = grpc.insecure_channel(target)
    calls = 0
    keys: list[tuple[tuple[str, str], ...]] = [(("x-api-key", api_key),), ()]

    def check(rpc: Rpc, raw: bytes) -> None:
        nonlocal calls
        for metadata in keys:
            calls += 1
            error = call(channel, rpc, raw, metadata)
            if error is None:
                continue
            code, details = error.code(), error.details() or ""
            where = (rpc.path, raw[:80], bool(metadata))
            assert code not in FORBIDDEN, (code, details, where)
            assert "Traceback" not in details and "<class" not in details, (details, where)
            if not decodes(rpc.request_class, raw):
                assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE), (
                    code,
                    details,
                    where,
                )

    def fuzz(rpc: Rpc) -> Callable[[], None]:
        @settings(
            max_examples=examples_per_rpc,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(raw=raw_messages(rpc.request_class.DESCRIPTOR))
        def never_unknown_or_internal(raw: bytes) -> None:
            check(rpc, raw)

        return never_unknown_or_internal

    try:
        rpcs = served_rpcs(channel)
        for rpc in rpcs:
            # The documented cases first, on every RPC: whatever hypothesis draws.
            for raw in (b"\xff", b"\x0a\x05ab", b"\x0a\x02\xc0\x80", b"\x08" + b"\xff" * 10):
                check(rpc, raw)
            fuzz(rpc)()
    finally:
        channel.close()
    return calls


async def test_hostile_bytes_at_every_rpc_are_never_unknown_or_internal(stack: Stack) -> None:
    with captured_logs() as logs:
        calls = await asyncio.to_thread(fuzz_every_rpc, stack.target, stack.api_key, 25)
    assert calls > 500
    text = logs.text()
    assert "Traceback" not in text
    assert "Unexpected" not in text  # grpc.aio's own "Unexpected [DecodeError] raised by ..."


async def test_undecodable_bytes_are_invalid_argument_before_authentication(
    stack: Stack,
) -> None:
    """The issue's case, spelt out (a string field's length runs past the end), unary and
    streaming, with no key, a wrong key and the right one: the same answer each time."""
    truncated = b"\x0a\x05ab"
    unary = stack.channel.unary_unary("/balances.v1.BalancesService/GetWalletBalance")
    stream = stack.channel.unary_stream("/balances.v1.BalancesService/WatchWalletBalance")
    for key in ("", "bk_not_a_key", stack.api_key):
        metadata = (("x-api-key", key),) if key else ()
        with pytest.raises(grpc.aio.AioRpcError) as unary_error:
            await unary(truncated, metadata=metadata, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as stream_error:
            async for _ in stream(truncated, metadata=metadata, timeout=5):
                pass
        for error in (unary_error.value, stream_error.value):
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert error.details() == "request message could not be decoded"
            assert any(k == "x-request-id" for k, _ in error.trailing_metadata() or ())


async def test_what_the_fuzzer_found_stays_fixed(stack: Stack) -> None:
    """A Timestamp out of range (it decodes; ToDatetime raised ValueError: INTERNAL) and a
    generated method nobody implements (health's List raised NotImplementedError: INTERNAL)."""
    replay = webhooks_pb2_grpc.WebhooksServiceStub(stack.keyed).ReplayWebhookEvents
    for since in (Timestamp(seconds=-(2**63)), Timestamp(seconds=0, nanos=-1)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await replay(webhooks_pb2.ReplayWebhookEventsRequest(since=since), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert "since is not a valid timestamp" in (caught.value.details() or "")
    health_list = stack.channel.unary_unary("/grpc.health.v1.Health/List")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_list(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, caught.value
