"""Watch streams read in the background, and waiting on a block follower instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpc import aio

from balances.v1 import balances_pb2 as pb
from tests.support.stack import Stack

if TYPE_CHECKING:
    from service.watch.follower import BlockFollower


def watch_wallet(stack: Stack, wallet_id: str) -> Any:
    """A WatchWalletBalance call of the stack's tenant."""
    # The API key goes as call metadata: grpc.aio registers the stack's ApiKeyInterceptor
    # (unary-unary and unary-stream in one class) as a unary-unary interceptor only.
    request = pb.WatchWalletBalanceRequest(wallet_id=wallet_id)
    return stack.stub.WatchWalletBalance(request, metadata=(("x-api-key", stack.api_key),))


def watch_customer(stack: Stack, customer_id: str) -> Any:
    """A WatchCustomerBalances call of the stack's tenant."""
    request = pb.WatchCustomerBalancesRequest(customer_id=customer_id)
    return stack.stub.WatchCustomerBalances(request, metadata=(("x-api-key", stack.api_key),))


@dataclass
class Watch:
    """A stream read in the background into a queue (reading never cancels the call)."""

    call: Any
    messages: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    error: aio.AioRpcError | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def start(cls, call: Any) -> Watch:
        watch = cls(call)
        watch.task = asyncio.create_task(watch._pump())
        return watch

    async def _pump(self) -> None:
        try:
            async for message in self.call:
                await self.messages.put(message)
        except aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    async def next(self, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def within(self, seconds: float) -> Any:
        """The next message if one arrives within ``seconds``, else None."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.messages.get(), seconds)
        return None

    async def none_within(self, seconds: float) -> bool:
        return await self.within(seconds) is None


def changes_of(message: Any) -> dict[str, tuple[str, str]]:
    """A watch message's changes: currency -> (previous amount, amount)."""
    return {c.currency: (c.previous_amount, c.amount) for c in message.changes}


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def processed(follower: BlockFollower, number: int, timeout: float = 5.0) -> None:
    """Wait until ``follower`` has processed block ``number`` (or a later one).

    Its listeners have then been told of that block's changes: what did not
    happen by then is not going to happen because of that block.
    """
    deadline = time.monotonic() + timeout
    while (last := follower.last_block) is None or last.number < number:
        assert time.monotonic() < deadline, f"the follower did not reach block {number}"
        await asyncio.sleep(0.02)
