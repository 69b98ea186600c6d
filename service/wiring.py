"""The composition root: every part of one server, built from settings and closed in reverse.

``open_service(settings)`` connects to each network (checking it is the
configured chain), opens the stores and wires the use cases; ``async with``
closes all of it.  ``Service.start()`` starts the background work (block
followers, newHeads subscriptions, webhook delivery), whose stops are
registered on the same exit stack, so nothing outlives the stores it uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from service.auth.authenticator import Authenticator
from service.balances import BalanceQueries
from service.cache import MemorySnapshotCache
from service.cache_redis import RedisSnapshotCache
from service.chain.new_heads import NewHeadsSubscription
from service.chain.providers import ProviderPool
from service.chain.reader import ChainReader
from service.cluster.coordination import Coordination, StreamBus, open_stream_bus
from service.domain import Wallet
from service.metrics_sources import MeasuredSource
from service.network_health import NetworkHealth
from service.ports import SnapshotCache, SnapshotSource
from service.quotas import CallQuotas, MemoryCallQuotas
from service.quotas_redis import RedisCallQuotas
from service.redis_link import open_redis_link
from service.registry import WalletRegistry
from service.settings import NetworkSettings, Settings
from service.store.stores import Stores, open_stores
from service.watch.cache_refresh import CacheRefresh
from service.watch.follower import BlockFollower
from service.watch.hub import WatchHub
from service.watch.initial_reads import InitialReads
from service.watch.totals import PriceBook
from service.watch.watches import BalanceWatches
from service.webhooks.delivery import WebhookDelivery
from service.webhooks.destinations import WebhookDestinations
from service.webhooks.emitter import WebhookEmitter
from service.webhooks.http_sender import HttpWebhookSender, SystemResolver
from service.webhooks.manage import WebhookManagement

__all__ = ["Service", "open_service"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Service:
    """Everything the servicers need; built by ``open_service``, started by ``start``."""

    settings: Settings
    stores: Stores  # SQLite or PostgreSQL ([directory] url)
    readers: Mapping[str, ChainReader]
    queries: BalanceQueries
    registry: WalletRegistry
    authenticator: Authenticator
    quotas: CallQuotas  # rate limits and concurrency quotas per API key (Redis or memory)
    hub: WatchHub  # watch subscriptions; a listener and watched source of every follower
    watches: BalanceWatches  # the watch use cases behind the streaming RPCs
    followers: Mapping[str, BlockFollower]  # one per network
    new_heads: tuple[NewHeadsSubscription, ...]  # wake a follower on each block (ws_url)
    webhook_emitter: WebhookEmitter  # block changes -> outbox
    webhook_delivery: WebhookDelivery  # outbox -> receivers
    webhook_management: WebhookManagement  # the config and replay use cases
    webhook_destinations: WebhookDestinations  # where webhooks may go (no SSRF)
    network_health: NetworkHealth  # each network readable or not, from every read's outcome
    cache: SnapshotCache  # the queries' snapshot cache (in memory or Redis)
    cluster: Coordination  # who leads each follower and delivery; streams on any replica

    async def start(self) -> None:
        """Start the background work; ``open_service`` already registered each stop."""
        self.network_health.start()
        self.cluster.start()  # each follower and delivery once it leads them (at once alone)

    def start_watching(self) -> None:
        """Start every block follower and newHeads subscription (idempotent), leading or
        not (tests that start no cluster)."""
        for follower in self.followers.values():
            follower.start()
        for subscription in self.new_heads:
            subscription.start()

    def listening_on(self, *ports: int | None) -> None:
        """The ports just bound: webhook development receivers may never be one of them."""
        self.webhook_destinations.serving_on(p for p in ports if p is not None)

    def stop_watches(self) -> None:
        """End every open watch stream normally (shutdown starts); new ones end at once."""
        self.hub.close()


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[Service]:
    """Connect, check each chain, open the stores and wire the use cases."""
    async with AsyncExitStack() as exits:
        readers: dict[str, ChainReader] = {}
        for network in settings.networks:
            pool = ProviderPool(
                network.name,
                network.rpc_urls,
                network.provider_policy(settings.rpc_timeout_seconds),
                chain_id=network.chain_id,
            )
            exits.push_async_callback(pool.aclose)
            readers[network.name] = ChainReader(network, pool, settings.rpc_timeout_seconds)
        await _prepare_all(list(readers.values()))
        for name, reader in readers.items():
            if not reader.uses_multicall:
                log.warning("network %s: no Multicall3 code; using JSON-RPC batches", name)
        stores = await open_stores(settings)
        exits.push_async_callback(stores.aclose)
        cache, quotas = await _shared_state(settings, exits)
        max_stale = {n.name: n.max_stale_seconds for n in settings.networks}
        health = NetworkHealth(
            readers,
            max_stale,
            probe_interval=settings.watch.poll_interval_seconds,
            read_timeout=settings.rpc_timeout_seconds,
        )
        exits.push_async_callback(health.aclose)
        # Every read of the queries and the followers tells the health of its network.
        observed: dict[str, SnapshotSource] = {
            name: health.observed(name, MeasuredSource(name, reader))
            for name, reader in readers.items()
        }
        queries = BalanceQueries(
            stores.wallets,
            observed,
            {n.name: n.tokens for n in settings.networks},
            cache,
            base_currency=settings.base_currency,
            minor_unit_digits=settings.minor_unit_digits,
            read_timeout=settings.rpc_timeout_seconds,
            max_stale=max_stale,
            confirmations={n.name: n.confirmations for n in settings.networks},
        )
        hub = WatchHub(queries.wallet_balance_at, stores.wallets.get_wallet)
        exits.callback(hub.close)
        initial_reads = InitialReads(observed, read_timeout=settings.rpc_timeout_seconds)
        exits.push_async_callback(initial_reads.aclose)

        async def wallet_deleted(wallet: Wallet) -> None:
            await queries.wallet_deleted(wallet)
            await hub.address_released(wallet.network, wallet.address)  # ends its watches

        # The customer's watches here take it in at once; on other replicas, at their next
        # look at the customer's wallets (``service.watch.watches``).
        wallet_registered = hub.wallet_registered

        destinations = WebhookDestinations(settings.webhooks.policy, SystemResolver())
        sender = HttpWebhookSender(settings.webhooks.policy, destinations)
        exits.push_async_callback(sender.aclose)  # after delivery has stopped using it
        delivery = WebhookDelivery(
            stores.webhooks,
            sender,
            settings.webhooks.policy,
            destinations=destinations,
            # Replicas: the follower that enqueues may lead elsewhere, and its wake-up
            # reaches only its own process; the leading delivery looks every second.
            poll_interval_seconds=1.0 if settings.directory_url else 5.0,
        )
        exits.push_async_callback(delivery.aclose)
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        bus = _stream_bus(settings, queries, hub)
        followers = {
            n.name: _follower(settings, n, observed[n.name], queries, hub, stores, emitter, bus)
            for n in settings.networks
        }
        new_heads = tuple(
            NewHeadsSubscription(n.name, n.ws_url, followers[n.name].wake)
            for n in settings.networks
            if n.ws_url is not None
        )
        # Stopping what never started is a no-op: every stop is registered here, once.
        for follower in followers.values():
            follower.adopt_from(initial_reads)  # the streams' initial reads: no second read
            exits.push_async_callback(follower.aclose)
        for subscription in new_heads:
            exits.push_async_callback(subscription.aclose)
        cluster = Coordination.build(
            settings,
            followers=followers,
            new_heads={n: [s for s in new_heads if s.network == n] for n in followers},
            delivery=delivery,
            bus=bus,
        )
        exits.push_async_callback(cluster.aclose)  # first: releases the leases at once
        yield Service(
            settings=settings,
            stores=stores,
            readers=readers,
            queries=queries,
            registry=WalletRegistry(
                stores.wallets,
                [n.name for n in settings.networks],
                wallet_deleted,
                on_wallet_registered=wallet_registered,
            ),
            authenticator=Authenticator(stores.api_keys),
            quotas=quotas,
            hub=hub,
            watches=BalanceWatches(
                stores.wallets,
                queries,
                hub,
                initial_reads.read,
                prices=PriceBook(
                    observed,
                    {n.name: n.tokens for n in settings.networks},
                    read_timeout=settings.rpc_timeout_seconds,
                ),
                minor_unit_digits=settings.minor_unit_digits,
                membership_interval=settings.watch.poll_interval_seconds,
            ),
            followers=followers,
            new_heads=new_heads,
            webhook_emitter=emitter,
            webhook_delivery=delivery,
            webhook_management=WebhookManagement(
                stores.webhooks, destinations, wake_delivery=delivery.wake
            ),
            webhook_destinations=destinations,
            network_health=health,
            cache=cache,
            cluster=cluster,
        )


async def _shared_state(
    settings: Settings, exits: AsyncExitStack
) -> tuple[SnapshotCache, CallQuotas]:
    """The snapshot cache and the rate limits: in Redis, shared by replicas, when
    ``[cache] redis_url`` is set; else in this process's memory."""
    if settings.cache_redis_url is None:
        memory = MemorySnapshotCache(settings.cache_ttl_seconds, settings.cache_max_entries)
        exits.push_async_callback(memory.aclose)
        return memory, MemoryCallQuotas(settings.limits.policy)
    link = open_redis_link(settings.cache_redis_url, settings.cache_redis_password)
    exits.push_async_callback(link.aclose)
    await link.ping()  # a Redis down at start is logged; the service starts without it
    return (
        RedisSnapshotCache(link, settings.cache_ttl_seconds),
        RedisCallQuotas(link, settings.limits.policy),
    )


def _follower(
    settings: Settings,
    network: NetworkSettings,
    reader: SnapshotSource,
    queries: BalanceQueries,
    hub: WatchHub,
    stores: Stores,
    emitter: WebhookEmitter,
    bus: StreamBus | None,
) -> BlockFollower:
    """A network's follower; listeners in order: the cache refresh of the streams' tenants,
    the hub, the cache refresh of the webhooks' tenants, the outbox.  Each refresh comes
    before what its tenants hear, and the streams' messages do not wait for the webhook
    store's lookup."""
    follower = BlockFollower(
        network.name,
        reader,
        depth=network.read_depth,
        tokens=network.tokens,
        poll_interval=settings.watch.poll_interval_seconds,
        read_timeout=settings.rpc_timeout_seconds,
        state_store=stores.follower_state,
    )
    webhooks_refresh = CacheRefresh(queries, (emitter,))
    if bus is not None:  # every replica's streams: read for them all, sent to them all
        follower.add_baseline_listener(bus.publisher)
        follower.add_baseline_listener(webhooks_refresh)
        follower.add_listener(bus.publisher)
        follower.add_listener(webhooks_refresh)
        follower.add_listener(emitter)
        follower.add_source(bus.registry)
        follower.add_source(emitter)
        return follower
    streams_refresh = CacheRefresh(queries, (hub,))
    for baseline in (streams_refresh, hub, webhooks_refresh):
        follower.add_baseline_listener(baseline)
    for listener in (streams_refresh, hub, webhooks_refresh, emitter):
        follower.add_listener(listener)
    follower.add_source(hub)
    follower.add_source(emitter)
    return follower


def _stream_bus(settings: Settings, queries: BalanceQueries, hub: WatchHub) -> StreamBus | None:
    """With Redis, streams on any replica: the relay feeds this replica's streams' cache
    refresh, then its hub, in the order a single process's follower does."""
    if settings.cache_redis_url is None:
        return None
    return open_stream_bus(
        settings.cache_redis_url,
        settings.cache_redis_password,
        hub=hub,
        networks=[n.name for n in settings.networks],
        listeners=(CacheRefresh(queries, (hub,)), hub),
        interval=settings.watch.poll_interval_seconds,
    )


async def _prepare_all(readers: list[ChainReader]) -> None:
    """Check every network concurrently; the first failure cancels the other checks.

    With a bare ``gather`` the other checks would keep running while their
    clients are closed, and log misleading failures for healthy networks.
    """
    tasks = [asyncio.ensure_future(reader.prepare()) for reader in readers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
