"""Interceptors' handlers built once per method, not once per call.

grpc.aio asks every server interceptor for the method's handler on every call;
an interceptor that wraps the handler would rebuild the same wrapper each time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["HandlerCache"]

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the stubs


class HandlerCache:
    """``wrap(method, handler)``, built once per method as long as the inner handler stays.

    Only methods that have a handler are kept, so the table is bounded by the
    server's methods whatever names callers send.  Should a method's inner
    handler ever change, its wrapper is rebuilt.
    """

    def __init__(self, wrap: Callable[[str, Handler], Handler]) -> None:
        self._wrap = wrap
        self._built: dict[str, tuple[Handler, Handler]] = {}

    def get(self, method: str, handler: Handler) -> Handler:
        built = self._built.get(method)
        if built is not None and built[0] is handler:
            return built[1]
        wrapped = self._wrap(method, handler)
        self._built[method] = (handler, wrapped)
        return wrapped
