"""Cluster coordination without servers: the Leader runner, the file lease, stable webhook
ids, the follower's block in flight, and the stream bus's messages.

The PostgreSQL and Redis leases and the bus on a real Redis: tests/integration/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.cluster.bus import decode_message, encode_message
from service.cluster.leader import Leader
from service.cluster.leases import FileLease, advisory_key, lease_file
from service.domain import BalanceChange, BlockRef, FeedReading, FollowerState, Snapshot
from service.store.sqlite import open_sqlite_stores
from service.watch.follower import BlockFollower
from service.webhooks.emitter import WebhookEmitter
from service.webhooks.payload import event_id
from tests.support.watching import until
from tests.unit.test_watch_hub import ADDR, DEPTH, TOKENS, FakeChain, Recorder

aio = pytest.mark.asyncio(loop_scope="session")

BLOCK = BlockRef("polygon", 7, "0x" + "ab" * 32, 1_705_314_607)
CHANGE = BalanceChange("polygon", ADDR, "USDC", 6, 1_250_500_000, 1_000_000_000)


# --- stable webhook ids ---------------------------------------------------------------------


def test_an_event_id_is_derived_from_the_change_and_only_from_it() -> None:
    first = event_id("acme", "wal_1", BLOCK, CHANGE)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", first)
    assert event_id("acme", "wal_1", BLOCK, CHANGE) == first
    others = {
        event_id("other", "wal_1", BLOCK, CHANGE),
        event_id("acme", "wal_2", BLOCK, CHANGE),
        event_id("acme", "wal_1", BlockRef("ethereum", 7, BLOCK.hash, BLOCK.timestamp), CHANGE),
        event_id("acme", "wal_1", BlockRef("polygon", 7, "0x" + "cd" * 32, 0), CHANGE),
        event_id("acme", "wal_1", BLOCK, BalanceChange("polygon", ADDR, "POL", 6, 1, 2)),
        event_id("acme", "wal_1", BLOCK, BalanceChange("polygon", ADDR, "USDC", 6, 1, 2)),
        event_id("acme", "wal_1", BLOCK, BalanceChange("polygon", ADDR, "USDC", 6, 2, 1)),
    }
    assert first not in others and len(others) == 7
    # Field boundaries count: ("ab", "c") and ("a", "bc") are different changes.
    assert event_id("ab", "c", BLOCK, CHANGE) != event_id("a", "bc", BLOCK, CHANGE)


@aio
async def test_the_same_change_detected_twice_is_enqueued_once_with_its_first_payload(
    tmp_path: Path,
) -> None:
    stores = await open_sqlite_stores(tmp_path / "outbox.sqlite3")
    try:
        wallet, _ = await stores.wallets.register_wallet("acme", "cus_1", "polygon", ADDR)
        await stores.webhooks.save_webhook_config(
            "acme",
            url="https://hooks.example.com/x",
            events=("balance.updated",),
            new_secret="whsec_" + "A" * 32,
            rotate_secret=True,
        )
        snapshot = Snapshot("polygon", 7, BLOCK.timestamp, {ADDR: {"USDC": 10**9}}, {})
        start = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
        # Two leaders one after the other, detecting the same change at different times.
        for minutes in (0, 5):
            moment = start + timedelta(minutes=minutes)
            emitter = WebhookEmitter(stores.webhooks, clock=lambda at=moment: at)  # type: ignore[misc]
            await emitter.balances_changed(BLOCK, [CHANGE], snapshot)
        events = await stores.webhooks.webhook_events("acme")
        assert [e.event_id for e in events] == [event_id("acme", wallet.wallet_id, BLOCK, CHANGE)]
        assert '"createdAt":1705314600000' in events[0].payload  # the first detection's
    finally:
        await stores.aclose()


# --- the follower's block in flight ---------------------------------------------------------


class DyingStore:
    """The real SQLite state store, except that the save of a read block can fail (a crash
    between the listeners and the save)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.die = False

    async def load_follower_state(self, network: str) -> FollowerState | None:
        return await self.inner.load_follower_state(network)  # type: ignore[no-any-return]

    async def save_follower_state(self, state: FollowerState) -> None:
        if self.die and "#" not in state.block.network:
            raise RuntimeError("killed")
        await self.inner.save_follower_state(state)


def _follower(chain: FakeChain, store: Any, recorder: Recorder) -> BlockFollower:
    follower = BlockFollower(
        "polygon",
        chain,
        depth=DEPTH,
        tokens=TOKENS,
        poll_interval=0.01,
        read_timeout=1,
        state_store=store,
    )
    follower.add_listener(recorder)
    follower.add_source(recorder)
    return follower


@aio
async def test_a_new_leader_reads_the_block_in_flight_again_before_any_newer_one(
    tmp_path: Path,
) -> None:
    stores = await open_sqlite_stores(tmp_path / "state.sqlite3")
    try:
        store = DyingStore(stores.follower_state)
        chain = FakeChain()
        old, heard_by_old = Recorder(), Recorder()
        first = _follower(chain, store, heard_by_old)
        assert await first.tick() is not None  # the baseline at block 1 (amount 5), saved
        chain.head, chain.amounts[2] = 2, 6
        store.die = True  # the listeners hear of block 2, then the process dies
        assert await first.tick() is None
        assert heard_by_old.calls == [(2, [(5, 6)])]
        # Meanwhile the chain moves on: block 4 changes the balance again.
        chain.head, chain.amounts[4] = 4, 8
        store.die = False
        second = _follower(chain, store, old)
        assert (await second.tick()) is not None
        assert (await second.tick()) is not None
        # The same change at the same block first (the same webhook ids), then the rest:
        # never 5 -> 8 at block 4 beside 5 -> 6 at block 2.
        assert old.calls == [(2, [(5, 6)]), (4, [(6, 8)])]
        saved = await stores.follower_state.load_follower_state("polygon")
        assert saved is not None and saved.block.number == 4
        # A later restart finds nothing in flight: no block is read twice.
        third = _follower(chain, store, Recorder())
        chain.reads.clear()
        assert await third.tick() is None and chain.reads == []
    finally:
        await stores.aclose()


@aio
async def test_a_follower_started_again_reloads_the_state_another_process_saved(
    tmp_path: Path,
) -> None:
    stores = await open_sqlite_stores(tmp_path / "state.sqlite3")
    try:
        chain = FakeChain()
        mine, theirs = Recorder(), Recorder()
        here = _follower(chain, stores.follower_state, mine)
        here.start()
        await until(lambda: here.last_block is not None)
        await here.aclose()  # lease lost
        chain.head, chain.amounts[2] = 2, 6
        there = _follower(chain, stores.follower_state, theirs)
        assert await there.tick() is not None  # the other replica reports 5 -> 6
        chain.head, chain.amounts[3] = 3, 7
        here.start()  # lease regained: resumes from block 2, not from its own block 1
        await until(lambda: here.last_block is not None and here.last_block.number == 3)
        await here.aclose()
        assert theirs.calls == [(2, [(5, 6)])]
        assert mine.calls == [(3, [(6, 7)])]
    finally:
        await stores.aclose()


# --- Leader ---------------------------------------------------------------------------------


class FakeLease:
    name = "balances:follower:polygon"

    def __init__(self) -> None:
        self.free = True
        self.held = False
        self.released = 0
        self.lost: Any = None

    async def keep(self) -> bool:
        if not self.held and self.free:
            self.held, self.free = True, False
        return self.held

    def on_lost(self, callback: Any) -> None:
        self.lost = callback

    async def release(self) -> None:
        self.released += 1
        if self.held:
            self.held, self.free = False, True


@aio
async def test_a_leader_runs_its_duty_only_while_it_holds_the_lease() -> None:
    lease = FakeLease()
    lease.free = False  # someone else leads
    log: list[str] = []

    async def elected() -> None:
        log.append("start")

    async def deposed() -> None:
        log.append("stop")

    leader = Leader(lease, elected=elected, deposed=deposed, check_interval=0.01)
    leader.start()
    await asyncio.sleep(0.05)
    assert log == [] and not leader.leading
    lease.free = True  # the other leader died: taken at the next check
    await until(lambda: leader.leading)
    assert log == ["start"]
    lease.held = False  # lost (e.g. the connection died) and told at once
    lease.lost()
    await until(lambda: not leader.leading)
    assert log == ["start", "stop"]
    lease.free = True
    await until(lambda: leader.leading)
    await leader.aclose()  # steps down and releases: another process may lead at once
    assert log == ["start", "stop", "start", "stop"]
    assert lease.released == 1 and lease.free and leader.terms == 2


# --- the file lease -------------------------------------------------------------------------


@aio
async def test_a_file_lease_is_held_by_one_holder_until_released(tmp_path: Path) -> None:
    path = lease_file(tmp_path / "wallets.sqlite3", "balances:follower:polygon")
    assert path == tmp_path / "wallets.sqlite3.balances-follower-polygon.lock"
    first = FileLease("x", path)
    second = FileLease("x", path)  # its own open file: flock conflicts even in one process
    assert await first.keep() is True
    assert await second.keep() is False
    assert await first.keep() is True  # confirmed
    await first.release()
    assert await second.keep() is True
    assert await first.keep() is False
    # A removed lock file is a lost lease: someone could lock a new file at that path.
    path.unlink()
    assert await second.keep() is True  # a new file, locked afresh
    assert await first.keep() is False
    await second.release()
    await first.release()


@aio
async def test_a_file_lease_in_a_missing_directory_is_not_held(tmp_path: Path) -> None:
    lease = FileLease("x", tmp_path / "missing" / "a.lock")
    assert await lease.keep() is False


def test_advisory_keys_are_stable_signed_64_bit_integers() -> None:
    key = advisory_key("balances:follower:polygon")
    assert key == advisory_key("balances:follower:polygon")
    assert -(2**63) <= key < 2**63
    assert key != advisory_key("balances:follower:ethereum")


# --- bus messages ---------------------------------------------------------------------------


def test_a_bus_message_carries_the_block_exactly() -> None:
    snapshot = Snapshot(
        "polygon", 7, BLOCK.timestamp, {ADDR: {"USDC": 2**256 - 1}}, {"POL": FeedReading(-5, 8, 9)}
    )
    big = BalanceChange("polygon", ADDR, "USDC", 6, 0, 2**256 - 1)
    decoded = decode_message(encode_message(BLOCK, snapshot, changes=[big]))
    assert decoded == (BLOCK, snapshot, [big], None)
    decoded = decode_message(encode_message(BLOCK, snapshot, baselined={ADDR}))
    assert decoded == (BLOCK, snapshot, None, [ADDR])


@pytest.mark.parametrize(
    "data",
    [b"", b"{}", b"[1]", b'{"block": [1, 2], "snapshot": "{}"}', b"\xff", b'{"block": null}'],
)
def test_a_malformed_bus_message_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a watch message"):
        decode_message(data)


# --- [cluster] lease_seconds ----------------------------------------------------------------


def test_cluster_lease_seconds_is_read_and_checked(tmp_path: Path) -> None:
    from service.errors import ConfigError
    from service.settings import parse_settings
    from tests.unit.test_config import _base

    assert parse_settings(_base(), base_dir=tmp_path).cluster_lease_seconds == 10.0
    doc = _base() | {"cluster": {"lease_seconds": 3}}
    assert parse_settings(doc, base_dir=tmp_path).cluster_lease_seconds == 3.0
    for bad in (0, -1, "10", float("inf"), True):
        with pytest.raises(ConfigError, match=r"cluster\.lease_seconds"):
            parse_settings(_base() | {"cluster": {"lease_seconds": bad}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"cluster\.lease"):
        parse_settings(_base() | {"cluster": {"lease": 3}}, base_dir=tmp_path)
