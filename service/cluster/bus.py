"""Streams on any replica: the leader's follower reads for every replica's watch streams,
and what it finds reaches every replica's watch hub, through Redis.

Three parts, one Redis:

``WatchRegistry``  (every replica) writes the addresses its hub watches to the hash
                   ``balances:watched:<network>``, one field per replica holding an
                   expiry, whenever they change (checked every poll interval) and
                   at least every third of ``ttl``; a replica that died stops
                   counting after ``ttl``.  It is also the leader's ``WatchedSource``:
                   the union of every live replica's addresses.
``WatchPublisher`` (the leader's follower) a ``ChangeListener`` and
                   ``BaselineListener`` that publishes each block's changes and
                   first reads, with the snapshot cut to the streamed addresses, on
                   the channel ``balances:watch:<network>``.
``WatchRelay``     (every replica, the leader too) subscribes to those channels and
                   hands each message to its own listeners, in the single-process
                   order: the streams' cache refresh, then the hub.  A stream on any
                   replica gets exactly the messages a single process would give.

A publish that fails (Redis down) is logged and dropped rather than failing the
block: the webhooks of that block go on; streams elsewhere catch up with the
next change of each wallet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.background import BackgroundLoop
from service.domain import BalanceChange, BlockRef, Snapshot
from service.snapshot_codec import decode_snapshot, encode_snapshot

if TYPE_CHECKING:
    from service.ports import BaselineListener, ChangeListener, WatchedSource

__all__ = [
    "RedisClient",
    "WatchListener",
    "WatchPublisher",
    "WatchRegistry",
    "WatchRelay",
    "decode_message",
    "encode_message",
    "redis_client",
    "replica_id",
]

log = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError, TimeoutError)
_CONNECT_TIMEOUT = 5.0

RedisClient = aioredis.Redis


def redis_client(url: str, password: str | None) -> RedisClient:
    """The bus's own client (no password in ``url``).  No read timeout: the relay's
    subscription waits for messages with ``get_message``'s own timeout.  Connects lazily."""
    return aioredis.Redis.from_url(
        url, password=password, socket_connect_timeout=_CONNECT_TIMEOUT, client_name="balances-bus"
    )


def replica_id() -> str:
    """This process among the replicas: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _channel(network: str) -> str:
    return f"balances:watch:{network}"


def _watched_key(network: str) -> str:
    return f"balances:watched:{network}"


class WatchListener(Protocol):
    """What a relayed message is handed to: the hub, or the streams' cache refresh."""

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None: ...

    async def balances_baselined(
        self, block: BlockRef, addresses: Collection[str], snapshot: Snapshot
    ) -> None: ...


class LocalWatches(Protocol):
    """This replica's watch hub, as the registry sees it."""

    async def watched_addresses(self, network: str) -> set[str]: ...


# --- messages ---------------------------------------------------------------------------


def encode_message(
    block: BlockRef,
    snapshot: Snapshot,
    *,
    changes: Sequence[BalanceChange] | None = None,
    baselined: Collection[str] | None = None,
) -> bytes:
    """One block's changes (or first reads) and the snapshot they came from."""
    doc: dict[str, Any] = {
        "block": [block.network, block.number, block.hash, block.timestamp],
        "snapshot": encode_snapshot(snapshot).decode(),
    }
    if changes is not None:
        doc["changes"] = [
            [c.network, c.address, c.currency, c.decimals, str(c.previous), str(c.current)]
            for c in changes
        ]
        # Apart, so that a replica of the previous version still reads the changes.
        corrections = [[i, c.reorg] for i, c in enumerate(changes) if c.reorg]
        if corrections:
            doc["reorgs"] = corrections
    else:
        doc["baselined"] = sorted(baselined or ())
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_message(
    data: bytes,
) -> tuple[BlockRef, Snapshot, list[BalanceChange] | None, list[str] | None]:
    """``(block, snapshot, changes, baselined)``, one of the last two None; ValueError else."""
    try:
        doc = json.loads(data)
        network, number, block_hash, timestamp = doc["block"]
        block = BlockRef(str(network), int(number), str(block_hash), int(timestamp))
        snapshot = decode_snapshot(doc["snapshot"].encode())
        if "changes" in doc:
            changes = [
                BalanceChange(str(n), str(a), str(c), int(d), int(p), int(v))
                for n, a, c, d, p, v in doc["changes"]
            ]
            for i, reorg in doc.get("reorgs", ()):
                changes[int(i)] = changes[int(i)]._replace(reorg=int(reorg))
            return block, snapshot, changes, None
        return block, snapshot, None, [str(a) for a in doc["baselined"]]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"not a watch message ({type(exc).__name__})") from None


def _cut(snapshot: Snapshot, addresses: Collection[str]) -> Snapshot:
    """Only ``addresses``' balances: the rest concerns no stream."""
    balances = {a: snapshot.balances[a] for a in addresses if a in snapshot.balances}
    return Snapshot(
        snapshot.network, snapshot.block_number, snapshot.block_timestamp, balances, snapshot.feeds
    )


# --- the registry -----------------------------------------------------------------------


class WatchRegistry:
    """Every replica's watched addresses per network, kept in Redis with per-replica expiry."""

    def __init__(
        self,
        client: aioredis.Redis,
        local: LocalWatches,
        networks: Sequence[str],
        *,
        interval: float,
        ttl: float = 30.0,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._local = local
        self._networks = tuple(networks)
        self._ttl = ttl
        self._replica = replica or replica_id()
        self._clock = clock
        self._written: dict[str, tuple[frozenset[str], float]] = {}  # network -> (set, when)
        self._streamed: dict[str, set[str]] = {}  # the union last read, per network
        self._failing = False
        self._loop = BackgroundLoop("watch-registry", self.publish, interval)

    def start(self) -> None:
        self._loop.start()

    async def aclose(self) -> None:
        """Stop, and withdraw this replica's addresses (its streams end with it)."""
        await self._loop.aclose()
        try:
            async with asyncio.timeout(1.0):
                for network in self._networks:
                    await self._client.hdel(_watched_key(network), self._replica)
        except _ERRORS:
            pass  # they expire after ttl anyway

    async def publish(self) -> None:
        """Write this replica's addresses where they changed or are due for renewal."""
        now = self._clock()
        try:
            for network in self._networks:
                addresses = frozenset(await self._local.watched_addresses(network))
                written = self._written.get(network)
                fresh = written is not None and now - written[1] < self._ttl / 3
                if written is not None and written[0] == addresses and (fresh or not addresses):
                    continue
                key = _watched_key(network)
                if addresses:
                    value = json.dumps({"until": now + self._ttl, "addresses": sorted(addresses)})
                    await self._client.hset(key, self._replica, value)
                else:
                    await self._client.hdel(key, self._replica)
                self._written[network] = (addresses, now)
        except _ERRORS as exc:
            self._failed("writing this replica's watched addresses", exc)
            self._written.clear()  # write everything again once Redis answers
            return
        self._failing = False

    async def watched_addresses(self, network: str) -> set[str]:
        """The follower's ``WatchedSource``: every live replica's addresses (and ours,
        read directly); the last known set when Redis does not answer."""
        found = set(await self._local.watched_addresses(network))
        key = _watched_key(network)
        try:
            entries = await self._client.hgetall(key)
            now = self._clock()
            expired = []
            for field, value in entries.items():
                try:
                    entry = json.loads(value)
                    if float(entry["until"]) < now:
                        expired.append(field)
                        continue
                    found.update(str(a) for a in entry["addresses"])
                except (ValueError, KeyError, TypeError):
                    expired.append(field)  # not ours to read: dropped
            if expired:
                await self._client.hdel(key, *expired)
        except _ERRORS as exc:
            self._failed("reading the replicas' watched addresses", exc)
            return found | self._streamed.get(network, set())
        self._streamed[network] = found
        return set(found)

    def streamed(self, network: str) -> set[str]:
        """The addresses streams watched at the last read (what the publisher sends)."""
        return self._streamed.get(network, set())

    def _failed(self, what: str, exc: BaseException) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "watch registry: %s failed (%s)", what, type(exc).__name__)
        self._failing = True


# --- the leader's side ------------------------------------------------------------------


class WatchPublisher:
    """The leader follower's listener that sends each block on to every replica's hub."""

    def __init__(self, client: aioredis.Redis, registry: WatchRegistry) -> None:
        self._client = client
        self._registry = registry
        self._failing = False
        self.published = 0  # messages sent (tests, metrics)

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        streamed = self._registry.streamed(block.network)
        changes = [c for c in changes if c.network == block.network and c.address in streamed]
        if changes:
            addresses = {c.address for c in changes}
            message = encode_message(block, _cut(snapshot, addresses), changes=changes)
            await self._publish(block.network, message)

    async def balances_baselined(
        self, block: BlockRef, addresses: Collection[str], snapshot: Snapshot
    ) -> None:
        streamed = self._registry.streamed(block.network)
        first = {a for a in addresses if a in streamed}
        if first:
            message = encode_message(block, _cut(snapshot, first), baselined=first)
            await self._publish(block.network, message)

    async def _publish(self, network: str, message: bytes) -> None:
        try:
            await self._client.publish(_channel(network), message)
        except _ERRORS as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(
                level,
                "network %s: sending a block to the replicas' streams failed (%s); dropped",
                network,
                type(exc).__name__,
            )
            self._failing = True
            return
        self._failing = False
        self.published += 1


# --- every replica's side ---------------------------------------------------------------


class WatchRelay:
    """Hands the leader's messages to this replica's listeners, in order, until ``aclose``."""

    def __init__(
        self,
        client: aioredis.Redis,
        networks: Sequence[str],
        listeners: Sequence[WatchListener],
        *,
        retry_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._channels = [_channel(n) for n in networks]
        self._listeners = tuple(listeners)
        self._retry = retry_interval
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.relayed = 0  # messages handed on (tests, metrics)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="watch-relay")

    async def subscribed(self) -> None:
        """Until the relay listens (tests: a message published before is not heard)."""
        await self._subscribed.wait()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(*self._channels)
                    self._subscribed.set()
                    if failing:
                        log.warning("watch relay: listening to the leader again")
                        failing = False
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            await self.deliver(message["data"])
            except _ERRORS as exc:
                self._subscribed.clear()
                if not failing:
                    log.warning(
                        "watch relay: Redis failed (%s); streams here miss changes until it"
                        " answers",
                        type(exc).__name__,
                    )
                    failing = True
                await asyncio.sleep(self._retry)

    async def deliver(self, data: bytes) -> None:
        """One message to every listener, in order (a failing listener is logged)."""
        try:
            block, snapshot, changes, baselined = decode_message(data)
        except ValueError as exc:
            log.warning("watch relay: dropped a message: %s", exc)
            return
        for listener in self._listeners:
            try:
                if changes is not None:
                    await listener.balances_changed(block, changes, snapshot)
                else:
                    await listener.balances_baselined(block, baselined or (), snapshot)
            except Exception:
                log.exception("network %s: a stream listener failed", block.network)
        self.relayed += 1


if TYPE_CHECKING:

    def _implements(
        registry: WatchRegistry, publisher: WatchPublisher
    ) -> tuple[WatchedSource, ChangeListener, BaselineListener]:
        """Checked by mypy only: the parts satisfy the follower's protocols."""
        return registry, publisher, publisher
