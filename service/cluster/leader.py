"""``Leader``: runs a duty (a block follower, webhook delivery) only while holding its lease.

Every ``check_interval`` it calls ``lease.keep()``: a follower that is not the
leader tries to take the lease, the leader confirms or renews it.  On winning it
starts the duty; the moment the lease is known lost (a failed check, or the
lease's ``on_lost`` between checks) it stops the duty, so two processes never
run it for longer than one check interval.  After the leader dies, another
process takes over within the lease's expiry plus one check interval (a
PostgreSQL or file lock ends with the process: at the next check).

The duty resumes where the cluster left it: a follower reloads the saved
follower state each time it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from service.background import BackgroundLoop
from service.ports import Lease

__all__ = ["Leader"]

log = logging.getLogger(__name__)


class Leader:
    """Holds ``lease`` whenever it can and runs ``elected``/``deposed`` on each change."""

    def __init__(
        self,
        lease: Lease,
        *,
        elected: Callable[[], Awaitable[None]],
        deposed: Callable[[], Awaitable[None]],
        check_interval: float,
    ) -> None:
        self._lease = lease
        self._elected = elected
        self._deposed = deposed
        self._loop = BackgroundLoop(f"leader {lease.name}", self._step, check_interval)
        self.leading = False
        self.terms = 0  # how many times this process became leader (tests, metrics)

    @property
    def name(self) -> str:
        return self._lease.name

    def start(self) -> None:
        """Contend for the lease in a task (the first attempt at once); idempotent."""
        self._lease.on_lost(self._loop.wake)
        self._loop.start()

    async def aclose(self) -> None:
        """Stop the duty and give the lease up, so another process takes over now."""
        await self._loop.aclose()
        try:
            await self._step_down()
        finally:
            await self._lease.release()

    async def _step(self) -> None:
        held = await self._lease.keep()
        if held and not self.leading:
            self.leading = True
            self.terms += 1
            log.info("%s: this process leads", self.name)
            await self._elected()
        elif not held and self.leading:
            log.warning("%s: lease lost; stopping", self.name)
            await self._step_down()

    async def _step_down(self) -> None:
        if self.leading:
            self.leading = False
            await self._deposed()
