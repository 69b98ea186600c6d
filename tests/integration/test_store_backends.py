"""Both backends behind the same ports: the outbox and its claims, follower state,
changes seen across store bundles (replicas); PostgreSQL's own start-up rules
(concurrent migrations, no password in the URL, no URL in any error) and
``balances db migrate`` on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from service.auth.keys import new_api_key
from service.domain import BlockRef, FollowerState
from service.errors import ConfigError, StartupError, WalletNotFound
from service.records import NewWebhookEvent
from service.settings import parse_settings
from service.store.postgres import open_postgres_stores
from service.store.postgres.migrations import MIGRATIONS
from service.store.stores import Stores
from tests.support.cli import OFFLINE_CONFIG, balances_main
from tests.support.databases import PostgresServer, free_port
from tests.support.store_backends import BACKENDS, StoreBackend, store_backend

pytestmark = pytest.mark.asyncio(loop_scope="session")

TENANT = "acme"
ADDR_1 = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0x9876543210987654321098765432109876543210"
T0 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return store_backend(request, tmp_path)


@pytest_asyncio.fixture
async def stores(backend: StoreBackend) -> AsyncIterator[Stores]:
    async with await backend.open() as opened:
        yield opened


async def outbox_with(stores: Stores, events_per_wallet: int) -> tuple[list[str], list[str]]:
    """Two wallets of a subscribed tenant, ``events_per_wallet`` events each (interleaved);
    return (wallet IDs, event IDs in outbox order)."""
    wallets = [
        (await stores.wallets.register_wallet(TENANT, "cus_1", "polygon", address))[0].wallet_id
        for address in (ADDR_1, ADDR_2)
    ]
    await stores.webhooks.save_webhook_config(
        TENANT,
        url="https://hooks.example.com/in",
        events=("balance.updated",),
        new_secret="whsec_x",
        rotate_secret=False,
    )
    events = [
        NewWebhookEvent(
            event_id=f"evt_{n}_{w}",
            tenant=TENANT,
            wallet_id=wallet_id,
            event_type="balance.updated",
            network="polygon",
            currency="USDC",
            block_number=n,
            block_hash=f"0x{n:064x}",
            payload=f'{{"n": {n}}}',
            created_at=T0,
        )
        for n in range(events_per_wallet)
        for w, wallet_id in enumerate(wallets)
    ]
    assert await stores.webhooks.enqueue_webhook_events(events) == len(events)
    assert await stores.webhooks.enqueue_webhook_events(events) == 0  # stored once
    return wallets, [event.event_id for event in events]


# ---------------------------------------------------------------- claims


async def test_two_claimers_never_get_the_same_event(backend: StoreBackend) -> None:
    first, second = await backend.open(), await backend.open()
    try:
        wallets = [
            (await first.wallets.register_wallet(TENANT, "cus_1", "polygon", f"0x{n:040d}"))[0]
            for n in range(1, 41)
        ]
        await first.webhooks.save_webhook_config(
            TENANT,
            url="https://hooks.example.com/in",
            events=("balance.updated",),
            new_secret="whsec_x",
            rotate_secret=False,
        )
        await first.webhooks.enqueue_webhook_events(
            [
                NewWebhookEvent(
                    f"evt_{w.wallet_id}", TENANT, w.wallet_id, "balance.updated", "polygon",
                    "USDC", 1, "0x01", "{}", T0,
                )
                for w in wallets
            ]
        )  # fmt: skip
        now = T0 + timedelta(seconds=1)
        claims = await asyncio.gather(
            *(
                store.webhooks.claim_due_webhook_events(now, 7, f"claimer-{i}", 30.0)
                for i in range(6)
                for store in (first, second)
            )
        )
        claimed = [event.event_id for batch in claims for event in batch]
        assert len(claimed) == len(set(claimed)) == 40  # each once, all of them
        assert all(len(batch) <= 7 for batch in claims)
        # Nothing is due while every lease lives, and the next attempt is when they end.
        assert await first.webhooks.claim_due_webhook_events(now, 50, "late", 30.0) == []
        assert await first.webhooks.due_webhook_events(now, 50) == []
        assert await second.webhooks.next_webhook_attempt_at() == now + timedelta(seconds=30)
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_expired_lease_is_claimed_again_and_the_stale_mark_is_refused(
    stores: Stores,
) -> None:
    wallets, events = await outbox_with(stores, 1)
    now = T0 + timedelta(seconds=1)
    outbox = stores.webhooks
    taken = await outbox.claim_due_webhook_events(now, 10, "a", 10.0)
    assert [e.event_id for e in taken] == events
    assert await outbox.claim_due_webhook_events(now + timedelta(seconds=9), 10, "b", 10.0) == []
    expired = now + timedelta(seconds=10)
    again = await outbox.claim_due_webhook_events(expired, 1, "b", 10.0, exclude_wallets={"x"})
    assert [e.event_id for e in again] == events[:1]
    assert again[0].attempts == 0 and again[0].url == "https://hooks.example.com/in"
    # "a" lost the claim: none of its marks applies; "b" holds it and records the send.
    assert not await outbox.mark_webhook_delivered(events[0], expired, claimer="a")
    assert not await outbox.mark_webhook_retry(events[0], "HTTP 500", expired, claimer="a")
    assert not await outbox.mark_webhook_failed(events[0], "HTTP 500", claimer="a")
    assert (await outbox.webhook_events())[0].attempts == 0
    assert await outbox.mark_webhook_retry(events[0], "HTTP 500", expired, claimer="b")
    # The mark released the claim: due again at once, for anyone; a done event is final.
    retaken = await outbox.claim_due_webhook_events(expired, 10, "c", 10.0)
    assert [e.event_id for e in retaken] == events[:1] + events[1:2]
    assert retaken[0].attempts == 1
    assert await outbox.mark_webhook_delivered(events[0], expired, claimer="c")
    assert not await outbox.mark_webhook_delivered(events[0], expired, claimer="c")
    assert not await outbox.mark_webhook_delivered(events[0], expired)
    stored = {e.event_id: e for e in await outbox.webhook_events()}
    assert stored[events[0]].status == "delivered" and stored[events[0]].attempts == 2
    assert wallets  # both wallets' events were claimable independently


async def test_one_wallets_events_go_in_order_across_claimers(stores: Stores) -> None:
    wallets, events = await outbox_with(stores, 3)
    by_wallet = {
        wallet: [e for e in events if e.endswith(f"_{w}")] for w, wallet in enumerate(wallets)
    }
    now = T0 + timedelta(seconds=1)
    outbox = stores.webhooks
    sent: dict[str, list[str]] = {wallet: [] for wallet in wallets}
    claimers = ["a", "b", "c"]
    for turn in range(20):
        claimer = claimers[turn % 3]
        for event in await outbox.claim_due_webhook_events(now, 10, claimer, 30.0):
            # The wallet's earlier events are all done before this one is handed out.
            assert sent[event.wallet_id] == by_wallet[event.wallet_id][: len(sent[event.wallet_id])]
            # While it is claimed, no one gets the wallet's next event.
            others = await outbox.claim_due_webhook_events(now, 10, "other", 30.0)
            assert event.wallet_id not in {e.wallet_id for e in others}
            for other in others:
                assert await outbox.mark_webhook_retry(other.event_id, "x", now, claimer="other")
            sent[event.wallet_id].append(event.event_id)
            assert await outbox.mark_webhook_delivered(event.event_id, now, claimer=claimer)
    assert sent == by_wallet


async def test_claims_are_renewed_and_released_by_their_claimer_only(stores: Stores) -> None:
    _, events = await outbox_with(stores, 1)
    now = T0 + timedelta(seconds=1)
    outbox = stores.webhooks
    assert len(await outbox.claim_due_webhook_events(now, 1, "a", 6.0)) == 1
    assert len(await outbox.claim_due_webhook_events(now, 1, "b", 6.0)) == 1
    later = now + timedelta(seconds=5)
    assert await outbox.renew_webhook_claims("a", later, 6.0) == 1
    # "a"'s claim now runs to later + 6 s; "b"'s ran out at now + 6 s.
    after_b = now + timedelta(seconds=7)
    assert [e.event_id for e in await outbox.claim_due_webhook_events(after_b, 5, "c", 6.0)] == [
        events[1]
    ]
    assert await outbox.renew_webhook_claims("b", after_b, 6.0) == 0  # "c" holds it now
    assert await outbox.release_webhook_claims("a") == 1
    assert [e.event_id for e in await outbox.claim_due_webhook_events(after_b, 5, "d", 6.0)] == [
        events[0]
    ]


async def test_requeued_events_are_unclaimed_and_pending(stores: Stores) -> None:
    _, events = await outbox_with(stores, 1)
    now = T0 + timedelta(seconds=1)
    for event in await stores.webhooks.claim_due_webhook_events(now, 10, "a", 30.0):
        assert await stores.webhooks.mark_webhook_failed(event.event_id, "HTTP 500", claimer="a")
    assert await stores.webhooks.requeue_webhook_events(TENANT, T0, now) == 2
    due = await stores.webhooks.claim_due_webhook_events(now, 10, "b", 30.0)
    assert [e.event_id for e in due] == events


# ---------------------------------------------------------------- follower state


async def test_follower_state_round_trips_uint256_amounts(stores: Stores) -> None:
    assert await stores.follower_state.load_follower_state("polygon") is None
    big = 2**256 - 1
    state = FollowerState(
        BlockRef("polygon", 7, "0x" + "ab" * 32, 1_700_000_000),
        {ADDR_1: {"USDC": big, "POL": 0}, ADDR_2: {}},
    )
    await stores.follower_state.save_follower_state(state)
    assert await stores.follower_state.load_follower_state("polygon") == state
    newer = FollowerState(BlockRef("polygon", 8, "0x" + "cd" * 32, 1_700_000_002), {})
    await stores.follower_state.save_follower_state(newer)
    assert await stores.follower_state.load_follower_state("polygon") == newer
    assert await stores.follower_state.load_follower_state("ethereum") is None


# ---------------------------------------------------------------- changes across replicas


async def test_a_revocation_or_deletion_elsewhere_is_seen_within_max_lag(
    backend: StoreBackend,
) -> None:
    mine, theirs = await backend.open(max_lag=0.2), await backend.open(max_lag=0.2)
    try:
        key = new_api_key()
        await theirs.api_keys.add_key(key.key_id, TENANT, key.digest)
        wallet, _ = await theirs.wallets.register_wallet(TENANT, "cus_1", "polygon", ADDR_1)
        found = await mine.api_keys.key_by_id(key.key_id)
        assert found is not None and found[0].revoked_at is None  # now cached here
        assert await mine.wallets.get_wallet(TENANT, wallet.wallet_id) == wallet
        await theirs.api_keys.revoke_key(key.key_id)
        await theirs.wallets.delete_wallet(TENANT, "cus_1", wallet.wallet_id)
        await asyncio.sleep(0.25)  # max_lag: the next lookup re-reads the change counter
        found = await mine.api_keys.key_by_id(key.key_id)
        assert found is not None and found[0].revoked_at is not None
        with pytest.raises(WalletNotFound):
            await mine.wallets.get_wallet(TENANT, wallet.wallet_id)
    finally:
        await mine.aclose()
        await theirs.aclose()


# ---------------------------------------------------------------- PostgreSQL start-up


async def test_concurrent_opens_of_a_fresh_database_migrate_once(postgres_url: str) -> None:
    opened = await asyncio.gather(*(open_postgres_stores(postgres_url) for _ in range(5)))
    try:
        versions = [await stores.database.schema_version() for stores in opened]
        assert versions == [len(MIGRATIONS)] * 5
    finally:
        for stores in opened:
            await stores.aclose()
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetch("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        assert [t["tablename"] for t in tables] == [
            "api_keys", "follower_state", "schema_version", "store_changes", "wallets",
            "webhook_configs", "webhook_outbox",
        ]  # fmt: skip
        # A database from a newer service is refused, naming no URL.
        await connection.execute("UPDATE schema_version SET version = 99")
    finally:
        await connection.close()
    with pytest.raises(StartupError) as raised:
        await open_postgres_stores(postgres_url)
    assert "schema version 99" in str(raised.value)
    assert postgres_url not in str(raised.value) and "balances_" not in str(raised.value)


def settings_with(directory: str, environ: dict[str, str] | None = None) -> object:
    import tomllib

    raw = tomllib.loads(
        directory + OFFLINE_CONFIG.replace('[directory]\npath = "wallets.sqlite3"\n', "")
    )
    return parse_settings(raw, Path("/tmp"), environ)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://balances:hunter2@db.example:5432/balances",
        "postgres://balances:hunter2@db.example/balances",
        "postgresql://balances@db.example/balances?password=hunter2",
    ],
)
async def test_a_password_in_the_url_is_refused_naming_the_key(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_with(f'[directory]\nurl = "{url}"\n')
    assert raised.value.key == "directory.url"
    assert "password" in raised.value.reason and "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "url", ["mysql://db.example/balances", "postgresql:///balances", "db.example:5432", "42"]
)
async def test_a_url_that_is_not_postgresql_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_with(f'[directory]\nurl = "{url}"\n')
    assert raised.value.key == "directory.url" and url not in raised.value.reason


async def test_the_password_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    url = '[directory]\nurl = "postgresql://balances@db.example/balances"\n'
    settings = settings_with(url, {"BALANCES_DIRECTORY__PASSWORD": "s3cret"})
    assert settings.directory_password == "s3cret"  # type: ignore[attr-defined]
    assert "s3cret" not in repr(settings)
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    with_file = f'{url}password_file = "{secret}"\n'
    assert settings_with(with_file).directory_password == "from-file"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="both set"):
        settings_with(with_file, {"BALANCES_DIRECTORY__PASSWORD": "s3cret"})
    with pytest.raises(ConfigError) as raised:
        settings_with(f'{url}password_file = "{tmp_path / "missing"}"\n')
    assert raised.value.key == "directory.password_file"


async def test_connection_errors_name_the_directory_database_never_the_url(
    postgres: PostgresServer,
) -> None:
    closed = f"postgresql://user_visible@127.0.0.1:{free_port()}/db_visible?sslmode=disable"
    wrong_database = postgres.url("no_such_db_visible")
    for url in (closed, wrong_database):
        with pytest.raises(StartupError) as raised:
            await open_postgres_stores(url, password="pw_visible")
        message = str(raised.value)
        assert "the directory database" in message
        for secret in ("user_visible", "db_visible", "pw_visible", url):
            assert secret not in message, message
        assert raised.value.__cause__ is None and raised.value.__suppress_context__


async def test_db_migrate_on_postgresql_through_the_cli(postgres_url: str, tmp_path: Path) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(
        OFFLINE_CONFIG.replace(
            '[directory]\npath = "wallets.sqlite3"\n',
            f'[directory]\nurl = "{postgres_url}"\n',
        )
    )
    env = {"BALANCES_DIRECTORY__PASSWORD": "unused-with-trust"}
    for _ in range(2):  # migrating an up-to-date database changes nothing
        code, out, err = await asyncio.to_thread(
            balances_main, "db", "migrate", "--config", str(config), env=env
        )
        assert (code, err) == (0, ""), err
        database = postgres_url.rsplit("/", 1)[1]
        assert out.strip() == (
            f"wallet directory postgresql://127.0.0.1:{postgres_url.split(':')[-1].split('/')[0]}"
            f"/*** is at schema version {len(MIGRATIONS)}"
        )
        assert database not in out
    assert not (tmp_path / "wallets.sqlite3").exists()  # PostgreSQL, not the SQLite default
