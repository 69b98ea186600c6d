"""``balances serve`` replicas on one PostgreSQL and one Redis: which one leads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from tests.support.serving import Served

# What a replica logs (stderr) when it takes the polygon follower's lease.
LEADS = "balances:follower:polygon: this process leads"


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def leads(served: Served) -> bool:
    """Whether ``served`` ever took the polygon follower's lease."""
    return any(LEADS in line for line in served.lines)


async def one_leader(replicas: Sequence[Served]) -> int:
    """The index of the one replica that leads the polygon follower (waited for)."""
    await wait_for(
        lambda: sum(leads(r) for r in replicas) == 1, "one replica to lead the polygon follower"
    )
    return next(i for i, r in enumerate(replicas) if leads(r))
