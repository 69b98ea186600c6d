"""The PostgreSQL schema, as migrations versioned by the one row of ``schema_version``.

The same tables, meanings and indexes as the SQLite schema
(``service.store.sqlite.migrations``), in PostgreSQL's types: times are
``timestamptz``, key digests ``bytea``, a config's events ``text[]``; identifiers
compare byte by byte (``COLLATE "C"``), as in SQLite, so every ``ORDER BY``
answers in the same order on both backends.  Versions count separately per
backend.

To change the schema, append a step to ``MIGRATIONS``; never edit a released
one.  Step N brings a database from version N-1 to N in one transaction with
the version bump.  Every open migrates under a session advisory lock, so
replicas starting together apply each step once and the others wait for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from service.errors import SchemaTooNew

__all__ = ["MIGRATE_LOCK", "MIGRATIONS", "migrate", "schema_version"]

_log = logging.getLogger(__name__)

# The session advisory lock held while migrating: "balances" as a 64-bit number.
MIGRATE_LOCK = int.from_bytes(b"balances", "big")

Migration = Sequence[str]

_ID = 'text COLLATE "C" NOT NULL'

MIGRATIONS: Sequence[Migration] = (
    # 1: the schema of SQLite's steps 1-6 at once, and the change counter.
    (
        f"""
        CREATE TABLE wallets (
            wallet_id   {_ID} PRIMARY KEY,
            tenant      {_ID},
            customer_id {_ID},
            network     {_ID},
            address     {_ID},
            created_at  timestamptz NOT NULL,
            UNIQUE (tenant, network, address)
        )
        """,
        "CREATE INDEX wallets_by_customer"
        " ON wallets (tenant, customer_id, network, created_at, wallet_id)",
        "CREATE INDEX wallets_by_customer_page"
        " ON wallets (tenant, customer_id, created_at, wallet_id)",
        f"""
        CREATE TABLE api_keys (
            key_id     {_ID} PRIMARY KEY,
            tenant     {_ID},
            digest     bytea NOT NULL CHECK (length(digest) = 32),
            created_at timestamptz NOT NULL,
            revoked_at timestamptz
        )
        """,
        "CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at)",
        f"""
        CREATE TABLE webhook_configs (
            tenant     {_ID} PRIMARY KEY,
            url        text NOT NULL,
            events     text[] NOT NULL,
            secret     text NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )
        """,
        # claimed_by/claimed_until: which delivery worker is sending the event, until when
        # (its lease); an expired lease makes the event claimable again.
        f"""
        CREATE TABLE webhook_outbox (
            seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id        {_ID} UNIQUE,
            tenant          {_ID},
            wallet_id       {_ID},
            event_type      text NOT NULL,
            network         text NOT NULL,
            currency        {_ID},
            block_number    bigint NOT NULL,
            block_hash      {_ID},
            payload         text NOT NULL,
            created_at      timestamptz NOT NULL,
            status          text NOT NULL
                CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL,
            last_error      text,
            delivered_at    timestamptz,
            claimed_by      text,
            claimed_until   timestamptz,
            UNIQUE (wallet_id, currency, block_hash)
        )
        """,
        "CREATE INDEX webhook_outbox_by_status ON webhook_outbox (status, next_attempt_at)",
        "CREATE INDEX webhook_outbox_by_wallet ON webhook_outbox (wallet_id, status, seq)",
        "CREATE INDEX webhook_outbox_by_tenant ON webhook_outbox (tenant, created_at)",
        "CREATE INDEX webhook_outbox_by_claimer ON webhook_outbox (claimed_by)"
        " WHERE claimed_by IS NOT NULL",
        # ``balances``: JSON {address: {symbol: "raw integer"}}, as in SQLite.
        f"""
        CREATE TABLE follower_state (
            network         {_ID} PRIMARY KEY,
            block_number    bigint NOT NULL,
            block_hash      text NOT NULL,
            block_timestamp bigint NOT NULL,
            balances        jsonb NOT NULL
        )
        """,
        # What SQLite's PRAGMA data_version tells the read-through caches: a number that
        # moves on every committed change to wallets or keys, by any replica.  Bumped
        # once per statement, inside the writer's transaction: it moves exactly when the
        # change becomes visible.
        """
        CREATE TABLE store_changes (
            id      smallint PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL
        )
        """,
        "INSERT INTO store_changes (id, version) VALUES (1, 0)",
        """
        CREATE FUNCTION store_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE store_changes SET version = version + 1 WHERE id = 1;
            RETURN NULL;
        END
        $$
        """,
        "CREATE TRIGGER wallets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
        " ON wallets FOR EACH STATEMENT EXECUTE FUNCTION store_changed()",
        "CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
        " ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION store_changed()",
    ),
    # 2: what a follower announced lately (the same JSON as SQLite's step 7), so a reorg
    # that replaced an announced block is recognised after a restart or by a new leader.
    ("ALTER TABLE follower_state ADD COLUMN announced jsonb NOT NULL DEFAULT '{}'::jsonb",),
)


async def schema_version(connection: Any) -> int:
    """The version recorded in ``schema_version``; 0 for a database never migrated."""
    exists = await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    version = await connection.fetchval("SELECT version FROM schema_version")
    return 0 if version is None else int(version)


async def migrate(connection: Any, where: str, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the pending steps of ``migrations`` on ``connection``; return the version.

    Holds the session advisory lock ``MIGRATE_LOCK`` throughout, and re-reads the
    version under it, so concurrent opens apply every step exactly once.
    ``where`` names the database safely (for ``SchemaTooNew``).
    """
    known = len(migrations)
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
    try:
        found = await schema_version(connection)
        if found > known:
            raise SchemaTooNew(where, found, known)
        if found == 0:
            async with connection.transaction():
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
                )
                if await connection.fetchval("SELECT count(*) FROM schema_version") == 0:
                    await connection.execute("INSERT INTO schema_version (version) VALUES (0)")
        for version in range(found + 1, known + 1):
            async with connection.transaction():
                for statement in migrations[version - 1]:
                    await connection.execute(statement)
                await connection.execute("UPDATE schema_version SET version = $1", version)
            _log.info("directory database schema migrated to version %d", version)
        return max(found, known)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)
