"""The bench's world: two anvil chains, the demo contracts, funded wallets, a directory.

Funding tens of thousands of wallets one ``mint`` transaction at a time would
take minutes, so balances are written straight into the token's storage
(``anvil_setStorageAt`` on its ``balanceOf`` slot, found once by probing) and
native balances with ``anvil_setBalance``, a thousand per JSON-RPC batch.

Every cold sample needs a snapshot the server has never read.  The cache is
keyed by (tenant, network, addresses), so each cold sample gets a tenant of its
own whose customer holds the *same* addresses: every cold call costs the same
chain work and is compared with the same raw payload.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from service.auth.keys import new_api_key
from service.devchain.anvil import AnvilNode
from service.devchain.deploy import mint
from service.devchain.world import ETHEREUM, POLYGON, DemoWorld, demo_settings, deploy_network
from service.records import WalletRow
from service.settings import Settings, WatchSettings
from service.settings.model import LimitsSettings
from service.store.sqlite import open_sqlite_stores

__all__ = [
    "BenchTenant",
    "BenchWorld",
    "Sizes",
    "build_chains",
    "build_directories",
    "rpc_batch",
    "server_settings",
    "set_token_balances",
]

_BATCH = 1000  # JSON-RPC items per HTTP request while funding
_PROBE = to_checksum_address("0x" + "be0f" + "0" * 35 + "1")
_TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass(frozen=True)
class Sizes:
    """How big the world is and how many samples each scenario takes."""

    repeats: int = 5  # A/B rounds, interleaved
    cold_samples: int = 3  # cold 100-wallet calls per round (each on a fresh tenant)
    big_samples: int = 1  # cold 5,000-wallet calls per round
    cold_wallets_per_network: int = 50  # 100 wallets on 2 networks
    big_wallets: int = 5000
    watchers: int = 1000
    directory_wallets: int = 100_000
    directory_customer_wallets: int = 10
    directory_samples: int = 50  # distinct 10-wallet customers looked up
    load_seconds: float = 3.0  # each load-generator run
    profile_cold_calls: int = 100  # cold calls sampled by the profiler, when a target is missed
    profile_big_calls: int = 10  # enough samples to say where a 5,000-wallet answer goes


@dataclass
class BenchTenant:
    name: str
    api_key: str
    customer_id: str
    wallet_ids: list[str] = field(default_factory=list)


@dataclass
class BenchWorld:
    demo: DemoWorld
    nodes: dict[str, AnvilNode]
    balance_slots: dict[str, int]  # token address -> balanceOf mapping slot
    warm_address: str
    cold_addresses: dict[str, list[str]]  # network -> addresses of the 100-wallet customer
    big_addresses: list[str]  # polygon; the first `watchers` are the watched ones
    directory_addresses: list[str]
    # Filled by build_directories:
    warm: BenchTenant | None = None
    cold: list[BenchTenant] = field(default_factory=list)
    big: list[BenchTenant] = field(default_factory=list)
    profile_cold: list[BenchTenant] = field(default_factory=list)
    profile_big: list[BenchTenant] = field(default_factory=list)
    watch: BenchTenant | None = None
    directory_tenant: str = "dir"
    directory_customers: list[str] = field(default_factory=list)
    small_directory_tenant: str = "dir-small"  # the same customers' shape, 10 of them
    small_directory_customers: list[str] = field(default_factory=list)
    # The counted server's directory: one tenant per captured payload, and the watchers.
    capture_cold: BenchTenant | None = None
    capture_big: BenchTenant | None = None
    capture_watch: BenchTenant | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _addresses(kind: int, count: int) -> list[str]:
    """Deterministic holder addresses, never a dev account or a contract."""
    return [to_checksum_address(f"0x{kind:04x}{i:036x}") for i in range(1, count + 1)]


async def rpc_batch(
    session: aiohttp.ClientSession, url: str, calls: Sequence[tuple[str, list[Any]]]
) -> list[Any]:
    """Every call's result, sent ``_BATCH`` at a time; any JSON-RPC error raises."""
    results: list[Any] = []
    for start in range(0, len(calls), _BATCH):
        chunk = calls[start : start + _BATCH]
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
            for i, (method, params) in enumerate(chunk)
        ]
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            answers: list[dict[str, Any]] = await response.json()
        answers.sort(key=lambda a: int(a["id"]))
        for answer in answers:
            if "error" in answer:
                raise RuntimeError(f"{chunk[answer['id']][0]} failed: {answer['error']}")
            results.append(answer.get("result"))
    return results


def _slot_key(slot: int, holder: str) -> str:
    # Vyper lays HashMap[address, uint256] out at keccak256(slot . key).
    return "0x" + keccak(slot.to_bytes(32, "big") + bytes(12) + bytes.fromhex(holder[2:])).hex()


async def _find_balance_slot(session: aiohttp.ClientSession, url: str, token: str) -> int:
    """The storage slot of ``balanceOf``: mint to a probe address and look for it."""
    await mint(url, token, _PROBE, 1)
    calls = [("eth_getStorageAt", [token, _slot_key(s, _PROBE), "latest"]) for s in range(32)]
    for slot, value in enumerate(await rpc_batch(session, url, calls)):
        if int(value, 16) == 1:
            return slot
    raise RuntimeError(f"balanceOf slot of {token} not found")


async def set_token_balances(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    slot: int,
    amounts: Iterable[tuple[str, int]],
) -> None:
    """Write each holder's ERC-20 balance straight into storage (no block is mined)."""
    calls = [
        ("anvil_setStorageAt", [token, _slot_key(slot, holder), "0x" + amount.to_bytes(32).hex()])
        for holder, amount in amounts
    ]
    await rpc_batch(session, url, calls)


async def _fund(
    session: aiohttp.ClientSession, world: BenchWorld, network: str, holders: list[str]
) -> None:
    chain = world.demo.networks[network]
    for t, token in enumerate(chain.tokens.values()):
        slot = world.balance_slots[token]
        amounts = ((h, (i + 1) * 1_000_000 + t * 10_000) for i, h in enumerate(holders))
        await set_token_balances(session, chain.rpc_url, token, slot, amounts)
    calls = [("anvil_setBalance", [h, hex((i + 1) * 10**15)]) for i, h in enumerate(holders)]
    await rpc_batch(session, chain.rpc_url, calls)


async def build_chains(stack: AsyncExitStack, sizes: Sizes) -> BenchWorld:
    """Two anvil chains with the demo contracts and every funded wallet."""
    started = time.monotonic()
    demo = DemoWorld()
    nodes = {}
    for plan in (POLYGON, ETHEREUM):
        node = await stack.enter_async_context(AnvilNode(chain_id=plan.chain_id))
        nodes[plan.name] = node
        demo.networks[plan.name] = await deploy_network(plan, node.url)
    per_network = sizes.cold_wallets_per_network
    world = BenchWorld(
        demo=demo,
        nodes=nodes,
        balance_slots={},
        warm_address=_addresses(0xBE01, 1)[0],
        cold_addresses={
            "polygon": _addresses(0xBE02, per_network),
            "ethereum": _addresses(0xBE03, per_network),
        },
        big_addresses=_addresses(0xBE04, max(sizes.big_wallets, sizes.watchers)),
        directory_addresses=_addresses(0xBE0D, sizes.directory_wallets),
    )
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        for deployed in demo.networks.values():
            for token in deployed.tokens.values():
                world.balance_slots[token] = await _find_balance_slot(
                    session, deployed.rpc_url, token
                )
        await _fund(session, world, "polygon", [world.warm_address, *world.big_addresses])
        for network, holders in world.cold_addresses.items():
            await _fund(session, world, network, holders)
        # Check one funded balance through the token itself, not through storage.
        chain = demo.networks["polygon"]
        holder = world.big_addresses[-1]
        data = "0x70a08231" + "0" * 24 + holder[2:].lower()
        answer = await rpc_batch(
            session,
            chain.rpc_url,
            [("eth_call", [{"to": chain.tokens["USDC"], "data": data}, "latest"])],
        )
        expected = len(world.big_addresses) * 1_000_000 + 1_000_000  # holder index + 1
        if int(answer[0], 16) != expected:
            raise RuntimeError(f"funding check failed: {int(answer[0], 16)} != {expected}")
    world.timings["chains and funding"] = time.monotonic() - started
    return world


async def _tenant(
    stores: Any, name: str, customer: str, rows: list[tuple[str, str]], prefix: str
) -> BenchTenant:
    """Register ``rows`` (network, address) for one customer of tenant ``name``, and a key."""
    key = new_api_key()
    await stores.api_keys.add_key(key.key_id, name, key.digest)
    wallet_rows = [
        WalletRow(customer, network, address, f"wal_{prefix}_{i:06d}")
        for i, (network, address) in enumerate(rows)
    ]
    wallets = await stores.wallets.import_wallets(name, wallet_rows)
    return BenchTenant(name, key.plaintext, customer, [w.wallet_id for w in wallets])


async def build_directories(world: BenchWorld, sizes: Sizes, main: Path, counted: Path) -> None:
    """The main server's directory and the counted server's (the few tenants it needs)."""
    started = time.monotonic()
    cold_rows = [(n, a) for n, addresses in world.cold_addresses.items() for a in addresses]
    big_rows = [("polygon", a) for a in world.big_addresses[: sizes.big_wallets]]
    watch_rows = [("polygon", a) for a in world.big_addresses[: sizes.watchers]]
    async with await open_sqlite_stores(main) as stores:
        world.warm = await _tenant(
            stores, "warm", "cus_warm", [("polygon", world.warm_address)], "warm"
        )
        cold = sizes.repeats * sizes.cold_samples
        for i in range(cold + sizes.profile_cold_calls):
            tenant = await _tenant(stores, f"cold-{i}", "cus_cold", cold_rows, f"cold{i}")
            (world.cold if i < cold else world.profile_cold).append(tenant)
        big = sizes.repeats * sizes.big_samples
        for i in range(big + sizes.profile_big_calls):
            tenant = await _tenant(stores, f"big-{i}", "cus_big", big_rows, f"big{i}")
            (world.big if i < big else world.profile_big).append(tenant)
        world.watch = await _tenant(stores, "watch", "cus_watch", watch_rows, "watch")
        # A tenant of directory_wallets wallets, in customers of directory_customer_wallets.
        per = sizes.directory_customer_wallets
        rows = [
            WalletRow(f"cus_d{i // per:06d}", "polygon", address, f"wal_dir_{i:06d}")
            for i, address in enumerate(world.directory_addresses)
        ]
        for start in range(0, len(rows), 10_000):
            await stores.wallets.import_wallets(
                world.directory_tenant, rows[start : start + 10_000]
            )
        small = _addresses(0xBE0E, 10 * per)
        await stores.wallets.import_wallets(
            world.small_directory_tenant,
            [
                WalletRow(f"cus_s{i // per:06d}", "polygon", address, f"wal_dirsmall_{i:06d}")
                for i, address in enumerate(small)
            ],
        )
        world.small_directory_customers = [f"cus_s{i:06d}" for i in range(10)]
        customers = len(rows) // per
        step = max(customers // sizes.directory_samples, 1)
        world.directory_customers = [
            f"cus_d{i:06d}"
            for i in itertools.islice(range(0, customers, step), sizes.directory_samples)
        ]
    async with await open_sqlite_stores(counted) as stores:
        world.capture_cold = await _tenant(stores, "cap-cold", "cus_cold", cold_rows, "capcold")
        world.capture_big = await _tenant(stores, "cap-big", "cus_big", big_rows, "capbig")
        world.capture_watch = await _tenant(stores, "watch", "cus_watch", watch_rows, "watch")
    world.timings["directories"] = time.monotonic() - started


def server_settings(
    world: BenchWorld,
    directory: Path,
    *,
    rest: bool,
    rpc_urls: dict[str, list[str]] | None = None,
) -> Settings:
    """The server's settings: the demo world's networks, followed over WebSocket, limits
    far above the load (a refused call would count as served), a cache that stays warm."""
    ws = {
        name: {"ws_url": node.url.replace("http://", "ws://")} for name, node in world.nodes.items()
    }
    settings = demo_settings(
        world.demo,
        listen="127.0.0.1:0",
        rest_listen="127.0.0.1:0" if rest else None,
        directory_path=directory,
        rpc_urls=rpc_urls,
        cache_ttl_seconds=3600,  # warm stays warm; cold samples use fresh tenants
        network_changes=ws if rpc_urls is None else None,
    )
    unlimited = 1_000_000
    return replace(
        settings,
        watch=WatchSettings(poll_interval_seconds=1),
        limits=LimitsSettings(
            requests_per_second=unlimited,
            burst=unlimited,
            max_in_flight=unlimited,
            max_streams=unlimited,
        ),
        rpc_timeout_seconds=30,
    )
