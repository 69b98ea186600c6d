"""Unit tests with fakes: stale-if-error in BalanceQueries, health per network (NetworkHealth),
and the ``max_stale_seconds`` setting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address
from google.protobuf.json_format import MessageToDict

from service.api.convert import (
    customer_balances_response,
    customer_watch_response,
    wallet_balance_response,
    wallet_watch_response,
)
from service.balances import BalanceQueries
from service.domain import (
    BlockHeader,
    CustomerBalances,
    PegPrice,
    Snapshot,
    Token,
    TokenAmount,
    Wallet,
    WalletBalance,
)
from service.errors import ChainUnavailable, ConfigError, CustomerNotFound, WalletNotFound
from service.network_health import NetworkHealth
from service.settings import load_settings
from service.settings.loader import parse_settings
from service.settings.render import render_settings
from service.watch.hub import WalletUpdate, WatchUpdate
from service.watch.watches import CustomerWatchUpdate

ASYNC = pytest.mark.asyncio(loop_scope="session")
READ_TIMEOUT = 5.0
MAX_STALE = 60.0
USDC = Token("USDC", 6, to_checksum_address("0x" + "cd" * 20), PegPrice(Fraction(1)))
ETH = Token("ETH", 18, None, PegPrice(Fraction(2000)))


def _address(n: int) -> str:
    return to_checksum_address(f"0x{n:040x}")


def _wallet(wallet_id: str, network: str, n: int, tenant: str = "default") -> Wallet:
    return Wallet(
        wallet_id, tenant, "cus_one", network, _address(n), datetime(2024, 1, 1, tzinfo=UTC)
    )


WALLETS = [_wallet("wal_poly", "polygon", 1), _wallet("wal_eth", "ethereum", 2)]


class Directory:
    """Every tenant has the same two wallets (a tenant's copy says whose it is)."""

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        for wallet in WALLETS:
            if wallet.wallet_id == wallet_id:
                return replace(wallet, tenant=tenant)
        raise WalletNotFound(wallet_id)

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        if customer_id != "cus_one":
            raise CustomerNotFound(customer_id)
        return [replace(w, tenant=tenant) for w in WALLETS]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Chain:
    """One network: answers at ``block`` (``block`` USDC held) unless ``down``."""

    def __init__(self, network: str) -> None:
        self.network = network
        self.block = 100
        self.down = False
        self.timeouts: list[float] = []
        self.heads = 0

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        self.timeouts.append(timeout)
        await asyncio.sleep(0)
        if self.down:
            raise ChainUnavailable(self.network, "no provider answered")
        held = {"USDC": 10**6 * self.block, "ETH": 0}
        return Snapshot(
            self.network,
            self.block,
            1_700_000_000 + self.block,
            {a: dict(held) for a in addresses},
            {},
        )

    async def head_number(self) -> int:
        self.heads += 1
        if self.down:
            raise ChainUnavailable(self.network, "no provider answered")
        return self.block

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        raise NotImplementedError


class Cache:
    """A snapshot cache whose entries expire when the test says so."""

    def __init__(self) -> None:
        self.entries: dict[str, Snapshot] = {}

    async def get(self, key: str) -> Snapshot | None:
        return self.entries.get(key)

    async def set(self, key: str, snapshot: Snapshot) -> None:
        self.entries[key] = snapshot

    async def delete(self, key: str) -> None:
        self.entries.pop(key, None)

    async def fill(
        self, key: str, read: Callable[[float], Awaitable[Snapshot]], timeout: float
    ) -> Snapshot:
        cached = self.entries.get(key)
        if cached is None:
            cached = self.entries[key] = await read(timeout)
        return cached

    async def aclose(self) -> None:
        self.entries.clear()


class World:
    def __init__(self, max_stale: Mapping[str, float] | None = None, entries: int = 100) -> None:
        self.clock = Clock()
        self.cache = Cache()
        self.chains = {"polygon": Chain("polygon"), "ethereum": Chain("ethereum")}
        self.queries = BalanceQueries(
            Directory(),
            self.chains,
            {"polygon": (USDC,), "ethereum": (USDC, ETH)},
            self.cache,
            base_currency="USD",
            minor_unit_digits=2,
            read_timeout=READ_TIMEOUT,
            max_stale={"polygon": MAX_STALE, "ethereum": MAX_STALE}
            if max_stale is None
            else max_stale,
            last_good_entries=entries,
            clock=self.clock,
        )

    def later(self, seconds: float) -> None:
        """Time passes and the cache's TTL runs out."""
        self.clock.now += seconds
        self.cache.entries.clear()


# --- stale-if-error ------------------------------------------------------------------------


@ASYNC
async def test_all_providers_down_serves_the_last_good_read_marked_stale() -> None:
    world = World()
    fresh = await world.queries.wallet_balance("default", "wal_poly")
    assert (fresh.block_number, fresh.stale) == (100, False)
    world.later(MAX_STALE)  # exactly max_stale old: still served
    world.chains["polygon"].down = True
    stale = await world.queries.wallet_balance("default", "wal_poly")
    assert stale.stale
    assert (stale.block_number, stale.amounts) == (fresh.block_number, fresh.amounts)
    assert stale.block_timestamp == fresh.block_timestamp  # its age, said by the block


@ASYNC
async def test_older_than_max_stale_is_unavailable_naming_the_network() -> None:
    world = World()
    await world.queries.wallet_balance("default", "wal_poly")
    world.later(MAX_STALE + 0.5)
    world.chains["polygon"].down = True
    with pytest.raises(ChainUnavailable) as raised:
        await world.queries.wallet_balance("default", "wal_poly")
    assert raised.value.network == "polygon"


@ASYNC
async def test_zero_max_stale_turns_it_off() -> None:
    world = World(max_stale={"polygon": 0, "ethereum": MAX_STALE})
    await world.queries.wallet_balance("default", "wal_poly")
    world.chains["polygon"].down = True
    world.cache.entries.clear()  # no time passes at all
    with pytest.raises(ChainUnavailable):
        await world.queries.wallet_balance("default", "wal_poly")


@ASYNC
async def test_a_recovered_network_answers_fresh_again() -> None:
    world = World()
    await world.queries.wallet_balance("default", "wal_poly")
    world.chains["polygon"].down = True
    world.later(1)
    assert (await world.queries.wallet_balance("default", "wal_poly")).stale
    world.chains["polygon"].down = False
    world.chains["polygon"].block = 101
    again = await world.queries.wallet_balance("default", "wal_poly")
    assert (again.block_number, again.stale) == (101, False)


@ASYNC
async def test_a_tenant_is_only_ever_served_its_own_earlier_read() -> None:
    world = World()
    await world.queries.wallet_balance("acme", "wal_poly")  # block 100, acme's
    world.chains["polygon"].block = 105
    await world.queries.wallet_balance("default", "wal_poly")  # block 105, default's
    world.chains["polygon"].down = True
    world.later(1)
    acme = await world.queries.wallet_balance("acme", "wal_poly")
    default = await world.queries.wallet_balance("default", "wal_poly")
    assert (acme.block_number, acme.stale) == (100, True)  # not default's newer read
    assert (default.block_number, default.stale) == (105, True)
    with pytest.raises(ChainUnavailable):  # never read by this tenant: nothing to serve
        await world.queries.wallet_balance("newcomer", "wal_poly")


@ASYNC
async def test_a_stale_answer_is_never_older_than_one_already_given() -> None:
    world = World()
    chain = world.chains["polygon"]
    await world.queries.wallet_balance("default", "wal_poly")  # block 100
    # The block follower announced block 110 for this wallet: cached and answered.
    wallet = await Directory().get_wallet("default", "wal_poly")
    announced = Snapshot("polygon", 110, 1_700_000_110, {wallet.address: {"USDC": 7}}, {})
    await world.queries.remember_address("default", announced, wallet.address)
    assert (await world.queries.wallet_balance("default", "wal_poly")).block_number == 110
    world.later(1)
    chain.block = 104  # a lagging provider answers a lower block: never the fallback
    await world.queries.wallet_balance("default", "wal_poly")
    world.later(1)
    chain.down = True
    stale = await world.queries.wallet_balance("default", "wal_poly")
    assert (stale.block_number, stale.stale, stale.amounts[0].raw) == (110, True, 7)


@ASYNC
async def test_customer_balances_mark_only_the_failed_networks_wallets() -> None:
    world = World()
    fresh = await world.queries.customer_balances("default", "cus_one")
    assert not fresh.stale
    world.later(1)
    world.chains["ethereum"].down = True
    world.chains["polygon"].block = 101
    mixed = await world.queries.customer_balances("default", "cus_one")
    by_id = {w.wallet.wallet_id: w for w in mixed.wallets}
    assert (by_id["wal_poly"].block_number, by_id["wal_poly"].stale) == (101, False)
    assert (by_id["wal_eth"].block_number, by_id["wal_eth"].stale) == (100, True)
    assert mixed.stale
    # The total counts the stale network's last good amount: 100 USDC on ethereum, 101 on polygon.
    assert mixed.total == 201


@ASYNC
async def test_with_a_deadline_the_read_leaves_time_for_the_fallback() -> None:
    world = World()
    chain = world.chains["polygon"]
    await world.queries.wallet_balance("default", "wal_poly", 2.0)
    world.later(1)
    await world.queries.wallet_balance("default", "wal_poly", 2.0)  # a fallback is at hand
    world.later(1)
    await world.queries.wallet_balance("default", "wal_poly", 0.5)
    assert chain.timeouts == [2.0, pytest.approx(1.9), pytest.approx(0.45)]


@ASYNC
async def test_last_good_reads_are_bounded_least_recently_used_first() -> None:
    world = World(entries=2)
    for tenant in ("a", "b", "c"):
        await world.queries.wallet_balance(tenant, "wal_poly")
    world.chains["polygon"].down = True
    world.later(1)
    with pytest.raises(ChainUnavailable):
        await world.queries.wallet_balance("a", "wal_poly")  # the oldest: dropped
    assert (await world.queries.wallet_balance("c", "wal_poly")).stale


@ASYNC
async def test_a_deleted_wallet_leaves_no_last_good_read() -> None:
    world = World()
    wallet = await Directory().get_wallet("default", "wal_poly")
    await world.queries.wallet_balance("default", "wal_poly")
    await world.queries.wallet_deleted(wallet)
    world.chains["polygon"].down = True
    with pytest.raises(ChainUnavailable):
        await world.queries.wallet_balance("default", "wal_poly")


# --- the messages: `stale` only when true ------------------------------------------------------


@pytest.mark.parametrize("stale", [False, True])
def test_stale_is_in_every_balance_message_only_when_true(stale: bool) -> None:
    balance = WalletBalance(WALLETS[0], (TokenAmount("USDC", 5, 6),), 100, 1_700_000_000, stale)
    watch = WatchUpdate((WalletUpdate(balance, "", ()),), 0, initial=True)
    customer = CustomerBalances("cus_one", Fraction(0), "USD", (balance,))
    messages = [
        wallet_balance_response(balance),
        customer_balances_response(customer, 2).wallets[0],
        wallet_watch_response(watch),
        customer_watch_response(CustomerWatchUpdate("cus_one", watch), 2).wallets[0],
    ]
    for message in messages:
        assert message.HasField("stale") is stale
        shown = MessageToDict(message, always_print_fields_with_no_presence=True)
        assert shown.get("stale", "absent") == (True if stale else "absent")


# --- health per network ----------------------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.reports: list[dict[str, bool]] = []

    async def networks_changed(self, serving: Mapping[str, bool]) -> None:
        self.reports.append(dict(serving))


def health(max_stale: float) -> tuple[NetworkHealth, dict[str, Chain], Clock, Listener]:
    clock = Clock()
    chains = {"polygon": Chain("polygon"), "ethereum": Chain("ethereum")}
    tracker = NetworkHealth(
        chains,
        {"polygon": max_stale, "ethereum": max_stale},
        probe_interval=2.0,
        read_timeout=READ_TIMEOUT,
        clock=clock,
    )
    listener = Listener()
    tracker.add_listener(listener)
    return tracker, chains, clock, listener


async def read(tracker: NetworkHealth, chain: Chain, timeout: float = READ_TIMEOUT) -> None:
    source = tracker.observed(chain.network, chain)
    with contextlib.suppress(ChainUnavailable):
        await source.snapshot([_address(1)], with_prices=False, timeout=timeout)


@ASYNC
async def test_a_failed_read_without_stale_if_error_is_not_serving_at_once() -> None:
    tracker, chains, _clock, listener = health(max_stale=0)
    await tracker.publish()
    assert listener.reports == [{"polygon": True, "ethereum": True}]
    chains["polygon"].down = True
    await read(tracker, chains["polygon"])
    assert listener.reports[-1] == {"polygon": False, "ethereum": True}
    chains["polygon"].down = False
    await read(tracker, chains["polygon"])
    assert listener.reports[-1] == {"polygon": True, "ethereum": True}
    assert len(listener.reports) == 3  # only changes are pushed


@ASYNC
async def test_a_failing_network_serves_while_within_max_stale() -> None:
    tracker, chains, clock, listener = health(max_stale=30)
    chains["polygon"].down = True
    clock.now += 10
    await read(tracker, chains["polygon"])
    assert listener.reports == [{"polygon": True, "ethereum": True}]  # the first report
    clock.now += 20.5  # 30.5 s since the last success, with no read meanwhile
    await tracker._step()  # the periodic step re-judges (and probes the idle networks)
    assert listener.reports[-1] == {"polygon": False, "ethereum": True}


@ASYNC
async def test_idle_networks_are_probed_so_a_recovery_is_seen_without_traffic() -> None:
    tracker, chains, clock, listener = health(max_stale=0)
    chains["polygon"].down = True
    await read(tracker, chains["polygon"])
    assert not tracker.serving("polygon")
    chains["polygon"].down = False
    clock.now += 1
    await tracker._step()
    assert chains["polygon"].heads == 0  # heard of within the probe interval: no probe
    clock.now += 1
    await tracker._step()
    assert chains["polygon"].heads == chains["ethereum"].heads == 1
    assert listener.reports[-1] == {"polygon": True, "ethereum": True}


@ASYNC
async def test_no_network_readable_is_reported_as_such() -> None:
    tracker, chains, clock, listener = health(max_stale=0)
    for chain in chains.values():
        chain.down = True
    clock.now += 2
    await tracker._step()  # both idle: both probed, both fail
    assert listener.reports[-1] == {"polygon": False, "ethereum": False}


@ASYNC
async def test_a_read_cut_short_by_its_callers_deadline_is_not_counted() -> None:
    tracker, _chains, clock, _listener = health(max_stale=0)

    class Slow(Chain):
        async def snapshot(self, *args: object, **kwargs: object) -> Snapshot:
            clock.now += 0.5  # the 0.5 s budget ran out
            raise ChainUnavailable(self.network, "timed out after 0.5s")

    await read(tracker, Slow("polygon"), timeout=0.5)
    assert tracker.serving("polygon")
    await read(tracker, Slow("polygon"), timeout=READ_TIMEOUT)  # a full read: counted
    assert not tracker.serving("polygon")


@ASYNC
async def test_a_failing_listener_never_fails_a_read() -> None:
    tracker, chains, _clock, _listener = health(max_stale=0)

    class Broken:
        async def networks_changed(self, serving: Mapping[str, bool]) -> None:
            raise RuntimeError("boom")

    tracker.add_listener(Broken())
    source = tracker.observed("polygon", chains["polygon"])
    chains["polygon"].down = True
    with pytest.raises(ChainUnavailable):
        await source.snapshot([_address(1)], with_prices=False, timeout=READ_TIMEOUT)
    chains["polygon"].down = False
    snapshot = await source.snapshot([_address(1)], with_prices=False, timeout=READ_TIMEOUT)
    assert snapshot.block_number == 100


# --- the setting -------------------------------------------------------------------------------


_ABSENT = object()


def _config(max_stale: object = _ABSENT) -> dict[str, object]:
    """A minimal configuration document with one network (and ``max_stale_seconds``)."""
    network: dict[str, object] = {
        "name": "polygon",
        "chain_id": 137,
        "rpc_urls": ["https://polygon.example"],
        "tokens": [{"symbol": "POL", "decimals": 18, "native": True, "price": {"peg": "1"}}],
    }
    if max_stale is not _ABSENT:
        network["max_stale_seconds"] = max_stale
    return {"networks": [network]}


def test_max_stale_seconds_defaults_to_a_minute_and_zero_is_off(tmp_path: Path) -> None:
    assert parse_settings(_config(), tmp_path).networks[0].max_stale_seconds == 60
    assert parse_settings(_config(0), tmp_path).networks[0].max_stale_seconds == 0
    assert parse_settings(_config(2.5), tmp_path).networks[0].max_stale_seconds == 2.5


@pytest.mark.parametrize("bad", [-1, True, "60", float("inf"), float("nan")])
def test_max_stale_seconds_must_be_zero_or_a_duration(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(_config(bad), tmp_path)
    assert raised.value.key.endswith("max_stale_seconds")
    assert "0 (off) or a positive number of seconds" in str(raised.value)


def test_max_stale_seconds_survives_rendering(tmp_path: Path) -> None:
    settings = parse_settings(_config(7.5), tmp_path)
    path = tmp_path / "balances.toml"
    path.write_text(render_settings(settings))
    assert load_settings(path).networks[0].max_stale_seconds == 7.5
