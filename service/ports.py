"""The ports: every interface a use case consumes, in domain terms; adapters implement them.

SnapshotSource       one network's chain: its head, block headers, snapshots at one block
SnapshotCache        recent snapshots (only successful reads are stored)
WalletReader         registered wallets by ID or customer, scoped by tenant
WalletDirectory      registers, lists and deletes wallets too (a ``WalletReader``)
ApiKeyStore          API key digests
WebhookStore         webhook configs per tenant and the durable outbox
WebhookOutbox        the outbox as the delivery worker uses it (a part of WebhookStore)
FollowerStateStore   each block follower's last read, across restarts
WebhookSender        sends one signed webhook request
HostResolver         a host name's addresses (webhook destinations are vetted by address)
ChangeListener, BaselineListener, WatchedSource   what block followers talk to
Lease                a cluster-wide lease: one process at a time leads a duty
Clock                the current time (UTC)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from service.domain import BalanceChange, BlockHeader, BlockRef, FollowerState, Snapshot, Wallet
from service.records import (
    ApiKeyRecord,
    DueWebhookEvent,
    NewWebhookEvent,
    WalletCursor,
    WalletRow,
    WebhookConfig,
    WebhookConfigChange,
    WebhookEventRecord,
)

__all__ = [
    "ApiKeyStore",
    "BaselineListener",
    "ChangeListener",
    "Clock",
    "FollowerStateStore",
    "HostResolver",
    "Lease",
    "SnapshotCache",
    "SnapshotSource",
    "WalletDirectory",
    "WalletReader",
    "WatchedSource",
    "WebhookOutbox",
    "WebhookSender",
    "WebhookStore",
    "utc_now",
]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default ``Clock``: the current time in UTC."""
    return datetime.now(UTC)


class SnapshotSource(Protocol):
    """One network's chain (``service.chain.reader.ChainReader``)."""

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        """Every balance of ``addresses`` (and the price feeds) read at one block:
        ``block_number`` when given, else the network's read depth."""
        ...

    async def head_number(self) -> int:
        """The chain's newest block number."""
        ...

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        """The header of a block by number or tag (``latest``, ``safe``, ``finalized``)."""
        ...


class SnapshotCache(Protocol):
    """Where recent snapshots are kept.  Only successful reads are ever stored."""

    async def get(self, key: str) -> Snapshot | None: ...

    async def set(self, key: str, snapshot: Snapshot, *, immutable: bool = False) -> None:
        """Store for the cache's TTL; ``immutable`` (a block deeper than the confirmation
        depth: it never changes): for as long as the cache's size allows."""
        ...

    async def delete(self, key: str) -> None:
        """Drop the key, for every process sharing the cache."""
        ...

    async def fill(
        self, key: str, read: Callable[[float], Awaitable[Snapshot]], timeout: float
    ) -> Snapshot:
        """The key's snapshot: the cached one, else ``read(seconds left)``'s, stored.

        A cache shared by several processes reads once for all of them: one
        process reads while the others wait for its value (at most ``timeout``
        in all).  Within one process the caller coalesces concurrent misses.
        """
        ...

    async def aclose(self) -> None: ...


class WalletReader(Protocol):
    """Where registered wallets are looked up, scoped by tenant."""

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        """The tenant's wallet by ID.

        Raises ``InvalidArgument`` for a malformed ID and ``WalletNotFound`` when
        there is no such wallet *for this tenant* (another tenant's wallet gives
        the same error with the same message).
        """
        ...

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        """The customer's wallets ordered by (network, created_at, wallet_id).

        Raises ``InvalidArgument`` for a malformed ID and ``CustomerNotFound``
        when the customer has no wallets in this tenant.
        """
        ...


class WalletDirectory(WalletReader, Protocol):
    """Where wallets are registered, scoped by tenant.  Wallet IDs are globally unique."""

    async def import_wallets(self, tenant: str, rows: Sequence[WalletRow]) -> list[Wallet]:
        """Register ``rows`` atomically; return one wallet per row, in row order.

        Either every row is written or none.  Re-importing a registered wallet
        is idempotent; a wallet ID taken by another wallet (in any tenant), or an
        address already registered in this tenant to a different customer or
        under a different ID, raises ``ImportRejected(reason, row=N)`` (1-based).
        """
        ...

    async def register_wallet(
        self, tenant: str, customer_id: str, network: str, address: str
    ) -> tuple[Wallet, bool]:
        """Register one wallet (``address`` already checksummed); ``(wallet, created)``.

        Idempotent: the same (network, address) for the same customer returns
        the existing wallet with ``created=False``.  The same (network, address)
        registered to a different customer of this tenant raises
        ``AlreadyExists``.  Other tenants are invisible: they may hold the same
        address and nothing here reveals it.  Safe under concurrent calls: many
        tasks registering the same row yield one wallet.
        """
        ...

    async def list_wallets(
        self, tenant: str, customer_id: str, *, after: WalletCursor | None, limit: int
    ) -> list[Wallet]:
        """Up to ``limit`` of the customer's wallets ordered by (created_at, wallet_id),
        strictly after ``after`` when given.  An unknown customer gives ``[]``."""
        ...

    async def delete_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        """Remove the customer's wallet and return it as it was.

        Raises ``WalletNotFound`` when the wallet does not exist, belongs to
        another customer, or to another tenant (all the same error and message).
        """
        ...


class ApiKeyStore(Protocol):
    """Where API key digests live (SHA-256 of the key; see service/auth/keys.py)."""

    async def add_key(self, key_id: str, tenant: str, digest: bytes) -> ApiKeyRecord:
        """Store a new key's digest for ``tenant``."""
        ...

    async def key_by_id(self, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
        """The record and stored digest of a key, revoked or not; None when unknown."""
        ...

    async def revoke_key(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked (idempotent); raises ``NotFound`` for an unknown id."""
        ...

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        """Every key (of ``tenant`` when given), ordered by (tenant, created_at)."""
        ...


class WebhookOutbox(Protocol):
    """The outbox as the delivery worker sees it: what is due, and how each send went.

    Outbox order is insertion order; one wallet's events are delivered in that
    order: an event is *due* only when no earlier event of its wallet is pending
    (an event being sent stays pending), and it is not claimed by a live lease.

    Claims let several workers (replicas, or a leader and its successor) share the
    outbox: a claimed event is sent by its claimer alone until the claimer marks it
    or the lease runs out (the claimer died); then anyone may claim it again.
    """

    async def due_webhook_events(
        self, now: datetime, limit: int, exclude_wallets: Collection[str] = ()
    ) -> list[DueWebhookEvent]:
        """Up to ``limit`` pending events whose time has come, each the earliest
        pending event of its wallet, oldest first; none of ``exclude_wallets``."""
        ...

    async def claim_due_webhook_events(
        self,
        now: datetime,
        limit: int,
        claimer: str,
        lease_seconds: float,
        exclude_wallets: Collection[str] = (),
    ) -> list[DueWebhookEvent]:
        """What ``due_webhook_events`` returns, each event claimed by ``claimer`` until
        ``now + lease_seconds``, atomically: two claimers never get the same event."""
        ...

    async def renew_webhook_claims(self, claimer: str, now: datetime, lease_seconds: float) -> int:
        """Extend every claim ``claimer`` still holds to ``now + lease_seconds`` (a live
        claimer renews well before its lease ends); return how many."""
        ...

    async def release_webhook_claims(self, claimer: str) -> int:
        """Give up every claim ``claimer`` holds (it stops): the events are due for others
        at once; return how many."""
        ...

    async def next_webhook_attempt_at(
        self, exclude_wallets: Collection[str] = ()
    ) -> datetime | None:
        """When the next event (of the kind ``due_webhook_events`` returns) is due."""
        ...

    # Each mark releases the event's claim.  With ``claimer`` it applies only while that
    # claimer still holds the claim (no one else claimed it after its lease ran out);
    # each returns whether it applied (False also when the event is no longer pending).

    async def mark_webhook_delivered(
        self, event_id: str, now: datetime, *, claimer: str | None = None
    ) -> bool:
        """Record a successful send (counts an attempt)."""
        ...

    async def mark_webhook_retry(
        self, event_id: str, error: str, next_attempt_at: datetime, *, claimer: str | None = None
    ) -> bool:
        """Record a failed send and when to try again (counts an attempt)."""
        ...

    async def mark_webhook_failed(
        self, event_id: str, error: str, *, claimer: str | None = None
    ) -> bool:
        """Record the last failed send: the event is given up (counts an attempt)."""
        ...


class WebhookStore(WebhookOutbox, Protocol):
    """Webhook configs per tenant and the durable outbox of events to deliver."""

    async def webhook_config(self, tenant: str) -> WebhookConfig | None:
        """The tenant's config, or None when it has none."""
        ...

    async def save_webhook_config(
        self,
        tenant: str,
        *,
        url: str | None,
        events: tuple[str, ...] | None,
        new_secret: str,
        rotate_secret: bool,
    ) -> WebhookConfigChange:
        """Create or update the tenant's config in one transaction.

        ``None`` keeps a field.  ``new_secret`` is stored when the config is
        created or ``rotate_secret`` is true.  Creating needs ``url`` and
        ``events`` (``InvalidArgument`` otherwise).
        """
        ...

    async def webhook_subscribers(
        self, network: str, event_type: str, addresses: Collection[str] | None = None
    ) -> list[Wallet]:
        """Wallets on ``network`` (only at ``addresses`` when given) of every tenant
        whose config subscribes to ``event_type``: one query."""
        ...

    async def enqueue_webhook_events(self, events: Sequence[NewWebhookEvent]) -> int:
        """Store ``events`` as pending, all in one transaction; return how many are new.

        An event for a (wallet, currency, block hash) already in the outbox is skipped.
        """
        ...

    async def requeue_webhook_events(
        self, tenant: str | None, since: datetime, now: datetime
    ) -> int:
        """Delivered and failed events created at or after ``since`` (of ``tenant``
        when given) become pending again with no attempts; return how many."""
        ...

    async def webhook_events(self, tenant: str | None = None) -> list[WebhookEventRecord]:
        """Every outbox event (of ``tenant`` when given), in outbox order."""
        ...

    async def webhook_backlog(self) -> tuple[int, datetime | None]:
        """How many events are pending, and when the oldest of them was created."""
        ...


class FollowerStateStore(Protocol):
    """Where followers keep their last read across restarts."""

    async def load_follower_state(self, network: str) -> FollowerState | None: ...

    async def save_follower_state(self, state: FollowerState) -> None: ...


class ChangeListener(Protocol):
    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        """Called once per block that changed something; ``snapshot`` is the full read."""
        ...


class WatchedSource(Protocol):
    async def watched_addresses(self, network: str) -> set[str]:
        """Checksummed addresses on ``network`` someone wants followed right now."""
        ...


class BaselineListener(Protocol):
    async def balances_baselined(
        self, block: BlockRef, addresses: Collection[str], snapshot: Snapshot
    ) -> None:
        """``addresses`` were read for the first time (since they were last unwatched)."""
        ...


class Lease(Protocol):
    """One named lease held by at most one process of the cluster at a time
    (``service.cluster.leases``: a PostgreSQL advisory lock, a file lock, a Redis key)."""

    name: str

    async def keep(self) -> bool:
        """Take the lease when it is free, or confirm (renew) it when held: True while
        this process holds it.  A broken backend is a lost lease (False), never raised."""
        ...

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` as soon as the lease is known lost between two ``keep``s
        (a backend that cannot tell never calls it: ``keep`` is the truth)."""
        ...

    async def release(self) -> None:
        """Give the lease up (idempotent): another process may take it at once."""
        ...


class WebhookSender(Protocol):
    """Sends one webhook request (``service.webhooks.http_sender``)."""

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        """None when the receiver answered 2xx, else a short reason naming no URL."""
        ...


class HostResolver(Protocol):
    """Looks up host names (``service.webhooks.http_sender.SystemResolver``)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address ``host`` has (an absolute name when it ends in ``.``), as
        ``ipaddress`` parses them; raises ``OSError`` when the lookup fails."""
        ...
