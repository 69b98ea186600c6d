"""Rebuilding an RPC method handler around a new behaviour, keeping its (de)serializers.

Server interceptors wrap behaviours; grpc wants a new handler of the same kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = [
    "Deserializer",
    "with_stream_stream_behaviour",
    "with_unary_behaviour",
    "with_unary_stream_behaviour",
]

# None: grpc hands the behaviour the request's raw bytes.
Deserializer = Callable[[bytes], Any] | None

_KEEP: Any = object()  # "the handler's own deserializer" (None is a deserializer value)


def with_unary_behaviour(
    handler: grpc.RpcMethodHandler[Any, Any],
    behaviour: Callable[..., Any],
    *,
    request_deserializer: Deserializer = _KEEP,
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=_deserializer(handler, request_deserializer),
        response_serializer=handler.response_serializer,
    )


def with_unary_stream_behaviour(
    handler: grpc.RpcMethodHandler[Any, Any],
    behaviour: Callable[..., Any],
    *,
    request_deserializer: Deserializer = _KEEP,
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_stream_rpc_method_handler(
        behaviour,
        request_deserializer=_deserializer(handler, request_deserializer),
        response_serializer=handler.response_serializer,
    )


def with_stream_stream_behaviour(
    handler: grpc.RpcMethodHandler[Any, Any],
    behaviour: Callable[..., Any],
    *,
    request_deserializer: Deserializer = _KEEP,
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.stream_stream_rpc_method_handler(
        behaviour,
        request_deserializer=_deserializer(handler, request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _deserializer(handler: grpc.RpcMethodHandler[Any, Any], given: Deserializer) -> Deserializer:
    return handler.request_deserializer if given is _KEEP else given
