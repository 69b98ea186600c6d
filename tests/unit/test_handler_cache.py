"""``HandlerCache``: an interceptor's handler is built once per method, not once per call."""

from __future__ import annotations

from typing import Any

import grpc

from service.api.handler_cache import HandlerCache


async def _behaviour(request: Any, context: Any) -> Any:
    return request


def test_a_methods_wrapper_is_built_once_and_rebuilt_only_for_a_new_inner_handler() -> None:
    built: list[str] = []

    def wrap(method: str, handler: Any) -> Any:
        built.append(method)
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary)

    cache = HandlerCache(wrap)
    first = grpc.unary_unary_rpc_method_handler(_behaviour)
    other = grpc.unary_unary_rpc_method_handler(_behaviour)
    wrapped = cache.get("/s/A", first)
    assert all(cache.get("/s/A", first) is wrapped for _ in range(100))
    assert cache.get("/s/B", first) is not wrapped  # per method
    assert built == ["/s/A", "/s/B"]
    rebuilt = cache.get("/s/A", other)  # the inner handler changed: never a stale wrapper
    assert rebuilt is not wrapped and built == ["/s/A", "/s/B", "/s/A"]
    assert cache.get("/s/A", other) is rebuilt
