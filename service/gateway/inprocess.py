"""The REST shim's way into a gRPC server in the same process: its own handlers, called directly.

``balances serve`` with REST on runs the shim beside the server; a call over a
channel would serialise the request, frame it in HTTP/2, cross a socket, and do
it all again for the answer (~0.7 ms of CPU per call, measured).  Like
grpc-gateway's ``RegisterXHandlerServer``, this calls the server's method
handlers directly, found the way grpc.aio finds them: registered method
handlers first, then the generic handlers, through the server's interceptor
chain, run anew for each call as grpc.aio runs it.  So authentication, quotas,
request IDs, error mapping and deadlines apply exactly as on the wire.

The handler gets a ``ServicerContext`` of this module's that holds the
metadata, the deadline, and the status and trailers the handler sets; an
aborted call, or one past its deadline, becomes the ``aio.AioRpcError`` a
channel would raise for it, so the shim maps both paths with the same code.

Nothing here knows an RPC: the handlers are recorded as the server is given
them (``record``).  Server-streaming RPCs (watches) still go over the channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, NamedTuple, NoReturn, cast

import grpc
from google.protobuf.message import Message
from grpc import aio

__all__ = ["InProcessServer"]

Handler = grpc.RpcMethodHandler  # generic only in the stubs
Metadata = tuple[tuple[str, str | bytes], ...]
_NO_METADATA: Metadata = ()


class _CallDetails(NamedTuple):
    """What grpc.aio hands the interceptors: ``grpc.HandlerCallDetails``' two fields."""

    method: str
    invocation_metadata: Metadata


class InProcessServer:
    """A grpc.aio server's interceptors and handlers, callable without a channel."""

    def __init__(self) -> None:
        self._interceptors: tuple[aio.ServerInterceptor, ...] = ()  # type: ignore[type-arg]
        self._registered: dict[str, Handler[Any, Any]] = {}
        self._generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self.calls = 0  # unary calls dispatched here: the tests' proof that no channel was used

    def record(
        self,
        server: aio.Server,
        interceptors: Sequence[aio.ServerInterceptor],  # type: ignore[type-arg]
    ) -> aio.Server:
        """``server`` for registering servicers on: what it is given is also recorded here.

        ``interceptors`` must be the ones the server was built with, in the same order.
        """
        self._interceptors = tuple(interceptors)
        return cast(aio.Server, _Recorder(server, self))

    async def unary(
        self, method: str, request: Message, metadata: Metadata, timeout: float
    ) -> tuple[Any, Metadata, Metadata]:
        """The response, initial and trailing metadata; ``aio.AioRpcError`` as a channel raises."""
        self.calls += 1
        handler = await self._handler(method, metadata)
        if handler is None or handler.unary_unary is None:
            raise _failure(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", _NO_METADATA)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        context = _Context(metadata, deadline)
        try:
            async with asyncio.timeout_at(deadline):
                response = await handler.unary_unary(request, context)  # type: ignore[arg-type]
        except aio.AbortError:
            raise context.failure() from None
        except TimeoutError:
            if loop.time() < deadline:
                raise _unexpected(TimeoutError()) from None
            raise _deadline_exceeded() from None
        except Exception as exc:  # past every interceptor: grpc.aio's own answer
            raise _unexpected(exc) from None
        if context.status not in (None, grpc.StatusCode.OK):
            raise context.failure()
        return response, context.initial, context.trailers

    async def _handler(self, method: str, metadata: Metadata) -> Handler[Any, Any] | None:
        registered = self._registered.get(method)

        def query(details: grpc.HandlerCallDetails) -> Handler[Any, Any] | None:
            if registered is not None:
                return registered
            for generic in self._generic:
                found = generic.service(details)
                if found is not None:
                    return found
            return None

        details = cast(grpc.HandlerCallDetails, _CallDetails(method, metadata))
        return await _intercepted(iter(self._interceptors), query, details)


async def _intercepted(
    interceptors: Iterator[aio.ServerInterceptor],  # type: ignore[type-arg]
    query: Callable[[grpc.HandlerCallDetails], Handler[Any, Any] | None],
    details: grpc.HandlerCallDetails,
) -> Handler[Any, Any] | None:
    """grpc.aio's chain: each interceptor's continuation is the rest of the chain."""
    interceptor = next(interceptors, None)
    if interceptor is None:
        return query(details)

    def continuation(inner: grpc.HandlerCallDetails) -> Awaitable[Handler[Any, Any] | None]:
        return _intercepted(interceptors, query, inner)

    return cast(
        "Handler[Any, Any] | None",
        await interceptor.intercept_service(continuation, details),  # type: ignore[arg-type]
    )


class _Recorder:
    """Forwards everything to the server; keeps a copy of the handlers it is given."""

    def __init__(self, server: aio.Server, into: InProcessServer) -> None:
        self._server = server
        self._into = into

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._into._generic.extend(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, Handler[Any, Any]]
    ) -> None:
        for name, handler in method_handlers.items():
            self._into._registered[f"/{service_name}/{name}"] = handler
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service_name, method_handlers
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _Context:
    """The ``aio.ServicerContext`` of one in-process unary call (the parts a unary call has)."""

    def __init__(self, metadata: Metadata, deadline: float) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self.initial: Metadata = _NO_METADATA
        self.trailers: Metadata = _NO_METADATA
        self.status: grpc.StatusCode | None = None
        self._details = ""
        self._aborted = False

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def time_remaining(self) -> float:
        return max(self._deadline - asyncio.get_running_loop().time(), 0.0)

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self.trailers = tuple(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        return self.trailers

    async def send_initial_metadata(self, initial_metadata: Metadata) -> None:
        self.initial = tuple(initial_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = code

    def code(self) -> grpc.StatusCode | None:
        return self.status

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def peer(self) -> str:
        return "in-process"

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return self._aborted

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn:
        # grpc.aio's rules: one abort; an abort without trailers or details keeps those set.
        if self._aborted:
            raise aio.UsageError("Abort already called!")
        self._aborted = True
        if trailing_metadata:
            self.trailers = tuple(trailing_metadata)
        if details or not self._details:
            self._details = details
        self.status = grpc.StatusCode.UNKNOWN if code == grpc.StatusCode.OK else code
        raise aio.AbortError("Locally aborted.")

    def failure(self) -> aio.AioRpcError:
        return aio.AioRpcError(
            self.status or grpc.StatusCode.UNKNOWN,
            aio.Metadata(*self.initial),
            aio.Metadata(*self.trailers),
            self._details,
            None,
        )


def _failure(code: grpc.StatusCode, details: str, trailers: Metadata) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(*trailers), details, None)


def _deadline_exceeded() -> aio.AioRpcError:
    # What the client side of a channel reports: no metadata reached it.
    return _failure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", _NO_METADATA)


def _unexpected(exc: BaseException) -> aio.AioRpcError:
    return _failure(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}", _NO_METADATA)
