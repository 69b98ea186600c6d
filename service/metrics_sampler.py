"""Copies a service's own counts and state into its Prometheus series.

The use cases import no metrics library (the import-linter's ``core`` contract):
they keep plain counts (``BalanceQueries.lookups``, a follower's
``blocks_processed``, the delivery's ``delivered``/``failed``/``dead``) and state
(a follower's last block, the hub's streams, a leader's lease).  ``sample`` turns
each count's growth since the last sample into a counter increment, and sets the
gauges.  One process samples before each scrape, so a scrape is exact; a
``serve --workers`` worker samples every ``WORKER_INTERVAL`` seconds into its
multiprocess files, which the supervisor sums when scraped.

Gauges of work only the leading process does (a network's follower, webhook
delivery) are set only while it leads, so the workers' "most recent" is the leader's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

from service import metrics
from service.cache import MemorySnapshotCache
from service.wiring import Service

__all__ = ["WORKER_INTERVAL", "MetricsSampler"]

log = logging.getLogger(__name__)

WORKER_INTERVAL = 1.0  # seconds between a worker's samples


class MetricsSampler:
    """``sample()`` brings ``service``'s series up to date."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._seen: dict[Hashable, int] = {}
        self._lock = asyncio.Lock()  # concurrent scrapes: one sample at a time

    def _grow(self, key: Hashable, total: int, counter: Any) -> None:
        """Add to ``counter`` what ``total`` grew since the last sample."""
        grown = total - self._seen.get(key, 0)
        if grown > 0:
            counter.inc(grown)
            self._seen[key] = total

    async def sample(self) -> None:
        async with self._lock:
            service = self._service
            self._lookups()
            self._providers()
            self._followers()
            self._cache()
            metrics.WATCH_STREAMS.set(service.hub.subscriber_count())
            for lease, leader in service.cluster.leaders.items():
                metrics.LEADER.labels(lease).set(1 if leader.leading else 0)
            for network, readable in service.network_health.statuses().items():
                metrics.NETWORK_READABLE.labels(network).set(1 if readable else 0)
            await self._webhooks()

    async def run(self, interval: float = WORKER_INTERVAL) -> None:
        """Sample every ``interval`` seconds until cancelled (a worker's loop)."""
        while True:
            try:
                await self.sample()
            except Exception:
                log.exception("sampling metrics failed")
            await asyncio.sleep(interval)

    def _lookups(self) -> None:
        for (network, result), total in list(self._service.queries.lookups.items()):
            if result == "stale":
                self._grow(("stale", network), total, metrics.STALE_ANSWERS.labels(network))
            else:
                counter = metrics.CACHE_LOOKUPS.labels(network, result)
                self._grow(("lookup", network, result), total, counter)

    def _providers(self) -> None:
        for network, reader in self._service.readers.items():
            pool = reader.providers
            self._grow(("hedges", network), pool.hedges, metrics.UPSTREAM_HEDGES.labels(network))
            if pool.best_head is not None:
                metrics.CHAIN_HEAD.labels(network).set(pool.best_head)
            for position, resting, lag in pool.provider_states():
                provider = str(position + 1)
                metrics.PROVIDER_RESTING.labels(network, provider).set(1 if resting else 0)
                if lag is not None:
                    metrics.PROVIDER_LAG.labels(network, provider).set(lag)

    def _followers(self) -> None:
        service = self._service
        for network, follower in service.followers.items():
            self._grow(
                ("blocks", network),
                follower.blocks_processed,
                metrics.FOLLOWER_BLOCKS.labels(network),
            )
            self._grow(
                ("changes", network),
                follower.changes_found,
                metrics.FOLLOWER_CHANGES.labels(network),
            )
            last = follower.last_block
            if last is None or not service.cluster.follower_leader(network).leading:
                continue
            metrics.FOLLOWER_HEAD.labels(network).set(last.number)
            head = service.readers[network].providers.best_head
            if head is not None:
                target = head - service.settings.network(network).confirmations
                metrics.FOLLOWER_LAG.labels(network).set(max(target - last.number, 0))

    def _cache(self) -> None:
        cache = self._service.cache
        if isinstance(cache, MemorySnapshotCache):
            metrics.CACHE_ENTRIES.set(len(cache))
            self._grow("expired", cache.expired, metrics.CACHE_EVICTIONS.labels("expired"))
            self._grow("evicted", cache.evicted, metrics.CACHE_EVICTIONS.labels("capacity"))

    async def _webhooks(self) -> None:
        service = self._service
        delivery = service.webhook_delivery
        self._grow("delivered", delivery.delivered, metrics.WEBHOOK_ATTEMPTS.labels("delivered"))
        self._grow("failed", delivery.failed, metrics.WEBHOOK_ATTEMPTS.labels("failed"))
        self._grow("dead", delivery.dead, metrics.WEBHOOK_DEAD)
        if not service.cluster.delivery_leader.leading:
            return
        try:
            pending, oldest = await service.stores.webhooks.webhook_backlog()
        except Exception as exc:  # the store is down: the last values stay
            log.warning("metrics: reading the webhook backlog failed (%s)", type(exc).__name__)
            return
        metrics.WEBHOOK_PENDING.set(pending)
        age = 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        metrics.WEBHOOK_OLDEST.set(max(age, 0.0))


@contextlib.asynccontextmanager
async def sampling(service: Service, *, interval: float = WORKER_INTERVAL) -> Any:
    """A worker's sampling loop for the life of the block."""
    sampler = MetricsSampler(service)
    task = asyncio.create_task(sampler.run(interval), name="metrics-sampler")
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await sampler.sample()  # the last counts before the worker exits
