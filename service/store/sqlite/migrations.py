"""The SQLite schema, as migrations versioned by ``PRAGMA user_version``.

To change the schema, append a step to ``MIGRATIONS``; never edit a released
one.  Step N (1-based) brings a database from version N-1 to N, in one
transaction together with the version bump, so a failed step leaves nothing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from service.errors import SchemaTooNew

__all__ = ["MIGRATIONS", "migrate", "schema_version"]

_log = logging.getLogger(__name__)

Migration = Sequence[str]
"""One step: SQL statements run in order (no ``executescript``: it would commit)."""

MIGRATIONS: Sequence[Migration] = (
    # 1: wallets.  created_at is UTC ISO-8601 text with microseconds and a Z,
    # fixed width, so it sorts as it reads.
    (
        """
        CREATE TABLE wallets (
            wallet_id   TEXT PRIMARY KEY NOT NULL,
            tenant      TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            network     TEXT NOT NULL,
            address     TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            UNIQUE (tenant, network, address)
        )
        """,
        "CREATE INDEX wallets_by_customer ON wallets (tenant, customer_id)",
    ),
    # 2: API keys (only SHA-256 digests of the keys), and an index serving
    # list_wallets' pages in (created_at, wallet_id) order per customer.
    (
        """
        CREATE TABLE api_keys (
            key_id     TEXT PRIMARY KEY NOT NULL,
            tenant     TEXT NOT NULL,
            digest     BLOB NOT NULL CHECK (typeof(digest) = 'blob' AND length(digest) = 32),
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )
        """,
        "CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at)",
        "CREATE INDEX wallets_by_customer_page"
        " ON wallets (tenant, customer_id, created_at, wallet_id)",
    ),
    # 3: webhooks.  One config per tenant (``events`` is a JSON array; the
    # secret is kept as is: signing needs it).  The outbox holds every event,
    # ``seq`` is its order; ``payload`` is the exact body that is signed and
    # sent; an event is stored once per (wallet, currency, block hash).
    (
        """
        CREATE TABLE webhook_configs (
            tenant     TEXT PRIMARY KEY NOT NULL,
            url        TEXT NOT NULL,
            events     TEXT NOT NULL,
            secret     TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE webhook_outbox (
            seq             INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id        TEXT NOT NULL UNIQUE,
            tenant          TEXT NOT NULL,
            wallet_id       TEXT NOT NULL,
            event_type      TEXT NOT NULL,
            network         TEXT NOT NULL,
            currency        TEXT NOT NULL,
            block_number    INTEGER NOT NULL,
            block_hash      TEXT NOT NULL,
            payload         TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            status          TEXT NOT NULL
                CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_error      TEXT,
            delivered_at    TEXT,
            UNIQUE (wallet_id, currency, block_hash)
        )
        """,
        "CREATE INDEX webhook_outbox_by_status ON webhook_outbox (status, next_attempt_at)",
        "CREATE INDEX webhook_outbox_by_wallet ON webhook_outbox (wallet_id, status, seq)",
        "CREATE INDEX webhook_outbox_by_tenant ON webhook_outbox (tenant, created_at)",
    ),
    # 4: what each network's block follower last read, so a restart compares the
    # first new block with it (net change emitted) instead of starting blind.
    # ``balances`` is JSON {address: {symbol: "raw integer"}}: uint256 exceeds SQLite's
    # integers, so amounts are decimal strings.
    (
        """
        CREATE TABLE follower_state (
            network         TEXT PRIMARY KEY NOT NULL,
            block_number    INTEGER NOT NULL,
            block_hash      TEXT NOT NULL,
            block_timestamp INTEGER NOT NULL,
            balances        TEXT NOT NULL
        )
        """,
    ),
    # 5: a customer's wallets in O(the customer's wallets).  ``customer_wallets`` asks for
    # (tenant, customer_id) in (network, created_at, wallet_id) order; with the old
    # (tenant, customer_id) index SQLite would rather serve ``ORDER BY network`` from
    # UNIQUE (tenant, network, address) and visit every wallet of the tenant.  This index
    # is that whole order (the old one was its prefix), so the lookup is one range.
    (
        "DROP INDEX wallets_by_customer",
        "CREATE INDEX wallets_by_customer"
        " ON wallets (tenant, customer_id, network, created_at, wallet_id)",
    ),
    # 6: outbox claims.  The delivery worker sending an event (``claimed_by``) and until
    # when its lease lasts (``claimed_until``, a timestamp like ``next_attempt_at``); an
    # expired lease makes the event claimable again.  NULL: nobody is sending it.
    (
        "ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT",
        "ALTER TABLE webhook_outbox ADD COLUMN claimed_until TEXT",
        # Renewing or releasing one claimer's claims: only claimed rows are indexed.
        "CREATE INDEX webhook_outbox_by_claimer ON webhook_outbox (claimed_by)"
        " WHERE claimed_by IS NOT NULL",
    ),
    # 7: what a follower announced lately, so a reorg that replaced an announced block is
    # recognised after a restart or by a new leader: JSON {"reorgs": n, "blocks": [[number,
    # hash, [[address, currency], ...]], ...]} ('{}': nothing announced yet).
    ("ALTER TABLE follower_state ADD COLUMN announced TEXT NOT NULL DEFAULT '{}'",),
)


def schema_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(connection: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the pending steps of ``migrations``; return the resulting version.

    ``connection`` must be in autocommit mode (``isolation_level=None``).  Each
    step re-reads the version under ``BEGIN IMMEDIATE``, so processes opening
    the same file at once apply every step exactly once.
    """
    known = len(migrations)
    found = schema_version(connection)
    if found > known:
        raise SchemaTooNew(_file_of(connection), found, known)
    for version in range(found + 1, known + 1):
        connection.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(connection) < version:
                for statement in migrations[version - 1]:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {int(version)}")
                _log.info("database schema migrated to version %d", version)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    return known


def _file_of(connection: sqlite3.Connection) -> str:
    """The file of the connection's main database (``:memory:`` for an in-memory one)."""
    for _, name, file in connection.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(file) or ":memory:"
    return ":memory:"
