"""Provider fault scenarios: a real server reading a real anvil through ``FaultProxy``.

One scenario: start a server whose polygon ``rpc_urls`` are a faulty proxy (and,
with two URLs, a healthy one after it), read once, switch the fault on, send
``requests`` reads (``GetWalletBalance`` and ``GetCustomerBalances``, ``concurrency``
at a time), check every returned amount against the chain at the block the
response names, switch the fault off and time how long until the first URL
answers again.  Shared by ``tests/integration/test_provider_faults.py`` (which
asserts) and ``scripts/provider_faults.py`` (which prints the figures).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from eth_utils.address import to_checksum_address
from grpc import aio

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.chain.multicall import BALANCE_OF, address_arg
from service.devchain.anvil import AnvilNode
from service.devchain.deploy import mine
from service.devchain.rpc import rpc_call
from service.devchain.world import POLYGON, DemoWallet, DemoWorld, deploy_network, fund_wallets
from service.grpc_server import create_server
from service.money import format_amount
from service.wiring import Service, open_service
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.stack import keyed_channel, write_stack_config

NETWORK = "polygon"
SECRET = "SECRET-PROVIDER-KEY"  # in every proxy URL's path: never in an answer


def holder(n: int) -> str:
    return to_checksum_address(f"0x{0xD3E0A:05x}{n:035x}")


WALLETS = [
    DemoWallet("wal_p1", "cus_p", NETWORK, holder(1), {"USDC": 1_250_500_000, "POL": 12 * 10**18}),
    DemoWallet("wal_p2", "cus_p", NETWORK, holder(2), {"USDC": 42_000_000, "USDT": 7_125_000}),
    DemoWallet("wal_q1", "cus_q", NETWORK, holder(3), {"USDT": 3_000_001, "POL": 10**18}),
]
# The request mix: wallets and customers, so concurrent reads rarely collapse into one.
READS: list[tuple[str, str]] = [
    ("wallet", "wal_p1"),
    ("customer", "cus_p"),
    ("wallet", "wal_p2"),
    ("wallet", "wal_q1"),
    ("customer", "cus_q"),
]
ONE_URL_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@dataclass(frozen=True)
class Tuning:
    recovery_seconds: float = 0.5
    hedge_floor_seconds: float = 0.05
    max_lag_blocks: int = 5
    deadline: float = 0.8  # the client's, and the server's read budget
    stall_seconds: float = 1.2
    retry_after: int = 1
    requests: int = 20
    concurrency: int = 4
    slack: float = 1.5  # beyond recovery_seconds (or Retry-After) for traffic to return

    @property
    def return_limit(self) -> float:
        return max(self.recovery_seconds, self.retry_after) + self.slack


async def polygon_world(url: str) -> DemoWorld:
    """``WALLETS`` funded on a fresh polygon-like chain at ``url``, ten blocks deep after."""
    world = DemoWorld()
    world.networks[NETWORK] = await deploy_network(POLYGON, url)
    await fund_wallets(world, list(WALLETS))
    await mine(url, 10)  # so a lagging view (head-5) holds the same balances
    return world


@dataclass
class Server:
    service: Service
    stub: balances_pb2_grpc.BalancesServiceStub


@asynccontextmanager
async def serving(
    world: DemoWorld, tmp_path: Path, urls: Sequence[str], tuning: Tuning
) -> AsyncIterator[Server]:
    """A real gRPC server reading ``world``'s polygon through ``urls``, in order."""
    config = await write_stack_config(
        world,
        tmp_path,
        {NETWORK: list(urls)},
        network_changes={
            NETWORK: {
                "recovery_seconds": tuning.recovery_seconds,
                "hedge_floor_seconds": tuning.hedge_floor_seconds,
                "max_lag_blocks": tuning.max_lag_blocks,
            }
        },
        cache_ttl_seconds=0.001,  # every request reads the chain
        rpc_timeout_seconds=tuning.deadline,
    )
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(open_service(config.settings))
        server, port, _health = create_server(service, config.settings.listen)
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = keyed_channel(f"127.0.0.1:{port}", config.api_key)
        stack.push_async_callback(channel.close)
        yield Server(service, balances_pb2_grpc.BalancesServiceStub(channel))


class ChainTruth:
    """What the chain holds, asked directly (no proxy): per block, or as funded."""

    def __init__(self, world: DemoWorld, node_url: str | None) -> None:
        network = world.networks[NETWORK]
        self._tokens: dict[str, str | None] = {**network.tokens, network.native_symbol: None}
        self._decimals = {s: 6 for s in network.tokens} | {network.native_symbol: 18}
        self._node_url = node_url  # None: compare with the funded amounts (no history)
        self._funded = {w.address.lower(): w.raw for w in world.wallets}
        self._known: dict[tuple[int, str, str], int] = {}
        self._session: aiohttp.ClientSession | None = None

    async def amount(self, block: int, holder: str, currency: str) -> str:
        raw = await self._raw(block, holder, currency)
        return format_amount(raw, self._decimals[currency])

    async def _raw(self, block: int, holder: str, currency: str) -> int:
        if self._node_url is None:
            return self._funded[holder.lower()].get(currency, 0)
        key = (block, holder.lower(), currency)
        if key not in self._known:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            token = self._tokens[currency]
            if token is None:
                answer = await rpc_call(
                    self._node_url, "eth_getBalance", [holder, hex(block)], session=self._session
                )
            else:
                call = {"to": token, "data": "0x" + (BALANCE_OF + address_arg(holder)).hex()}
                answer = await rpc_call(
                    self._node_url, "eth_call", [call, hex(block)], session=self._session
                )
            self._known[key] = int(answer, 16)
        return self._known[key]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class Outcome:
    ok: bool
    seconds: float
    code: str = "OK"
    details: str = ""
    blocks: list[int] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # amounts that differ from the chain
    stale: bool = False  # served from the last good read (every provider failed)
    key: tuple[str, str] = ("", "")  # what was asked: (kind, id)


async def read_once(
    stub: balances_pb2_grpc.BalancesServiceStub,
    kind: str,
    ident: str,
    deadline: float,
    truth: ChainTruth,
) -> Outcome:
    """One request; its amounts checked against ``truth`` at the block it names."""
    addresses = {w.wallet_id: w.address for w in WALLETS}
    started = time.monotonic()
    response: Any
    try:
        if kind == "wallet":
            request_w = pb.GetWalletBalanceRequest(wallet_id=ident)
            response = await stub.GetWalletBalance(request_w, timeout=deadline)
            wallets = [(addresses[ident], response.block_number, response.balances)]
            stale = response.stale
        else:
            request_c = pb.GetCustomerBalancesRequest(customer_id=ident)
            response = await stub.GetCustomerBalances(request_c, timeout=deadline)
            wallets = [(w.address, w.block_number, w.balances) for w in response.wallets]
            stale = any(w.stale for w in response.wallets)
    except aio.AioRpcError as error:
        return Outcome(
            False,
            time.monotonic() - started,
            error.code().name,
            error.details() or "",
            key=(kind, ident),
        )
    outcome = Outcome(True, time.monotonic() - started, stale=stale, key=(kind, ident))
    for address, block, balances in wallets:
        outcome.blocks.append(block)
        for balance in balances:
            expected = await truth.amount(block, address, balance.currency)
            if balance.amount != expected:
                outcome.wrong.append(
                    f"{address} {balance.currency} at {block}: {balance.amount} != {expected}"
                )
    return outcome


async def read_many(
    stub: balances_pb2_grpc.BalancesServiceStub, truth: ChainTruth, tuning: Tuning
) -> list[Outcome]:
    """``tuning.requests`` reads, ``tuning.concurrency`` at a time, in completion order."""
    done: list[Outcome] = []
    mix = itertools.cycle(READS)
    left = tuning.requests
    while left:
        batch = [next(mix) for _ in range(min(tuning.concurrency, left))]
        left -= len(batch)

        async def one(kind: str, ident: str) -> None:
            done.append(await read_once(stub, kind, ident, tuning.deadline, truth))

        await asyncio.gather(*(one(kind, ident) for kind, ident in batch))
    return done


async def until(
    check: Callable[[], Awaitable[bool]], limit: float, pause: float = 0.02
) -> float | None:
    """Seconds until ``check`` is true (tried every ``pause``), or None after ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(pause)
    return None


@dataclass
class Report:
    """One scenario's figures."""

    fault: str
    urls: int
    outcomes: list[Outcome]  # while the fault was on
    after: list[Outcome]  # after it ended, until the first URL answered again
    returned_after: float | None  # fault off -> the first URL answers a read again
    fault_calls: int  # calls the faulty URL received while faulty
    healthy_answers: int  # eth_calls the second URL answered while the first was faulty

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def stale(self) -> list[Outcome]:
        return [o for o in self.outcomes + self.after if o.ok and o.stale]

    @property
    def failed_after(self) -> list[Outcome]:
        return [o for o in self.after if not o.ok]

    @property
    def wrong(self) -> list[str]:
        return [w for o in self.outcomes + self.after for w in o.wrong]

    @property
    def codes(self) -> Counter[str]:
        return Counter(o.code for o in self.failed)

    def failover(self) -> str:
        """Two URLs: the first read's time under the fault, and the slowest; one URL:
        the median time to an error."""
        if self.urls == 1:
            times = [o.seconds for o in self.failed]
            return f"error in {statistics.median(times):.3f}s" if times else "-"
        served = [o.seconds for o in self.outcomes if o.ok]
        return f"{served[0]:.3f}s / max {max(served):.3f}s" if served else "-"

    def problems(self, tuning: Tuning) -> list[str]:
        """What breaks the promise: failures with a healthy URL, wrong amounts, codes other
        than UNAVAILABLE/DEADLINE_EXCEEDED (UNAVAILABLE naming the network), a key in an
        answer, no return of traffic to the first URL in time."""
        found = list(self.wrong)
        if self.urls == 2 and self.failed:
            found.append(f"{len(self.failed)} failed with a healthy second URL: {self.codes}")
        for o in self.failed + self.failed_after:
            if o.code not in ONE_URL_CODES:
                found.append(f"{o.code}: {o.details}")
            elif o.code == "UNAVAILABLE" and NETWORK not in o.details:
                found.append(f"UNAVAILABLE not naming {NETWORK}: {o.details}")
            if SECRET in o.details or "127.0.0.1" in o.details:
                found.append(f"an answer names a URL: {o.details}")
        if self.returned_after is None:
            found.append(f"traffic did not return to the first URL within {tuning.return_limit}s")
        return found


async def fault_scenario(
    world: DemoWorld,
    node_url: str,
    tmp_path: Path,
    fault: Fault,
    urls: int,
    tuning: Tuning,
) -> Report:
    """``fault`` on the first of ``urls`` (1 or 2) polygon providers; see the module text."""
    truth = ChainTruth(world, node_url)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(truth.aclose)
        faulty = await stack.enter_async_context(FaultProxy(node_url))
        healthy = await stack.enter_async_context(FaultProxy(node_url))
        faulty.stall_seconds = tuning.stall_seconds
        faulty.retry_after = str(tuning.retry_after)
        server = await stack.enter_async_context(
            serving(world, tmp_path, [faulty.url, healthy.url][:urls], tuning)
        )
        warm = await read_once(server.stub, "wallet", "wal_p1", tuning.deadline, truth)
        assert warm.ok and not warm.wrong, warm
        before = sum(faulty.counts.values())
        await faulty.set_fault(fault)
        healthy.answered.clear()
        outcomes = await read_many(server.stub, truth, tuning)
        fault_calls = sum(faulty.counts.values()) - before
        healthy_answers = healthy.answered["eth_call"]
        await faulty.set_fault(None)
        faulty.answered.clear()
        after: list[Outcome] = []

        async def first_url_answers() -> bool:
            seen = faulty.answered["eth_call"]
            outcome = await read_once(server.stub, "wallet", "wal_p2", tuning.deadline, truth)
            after.append(outcome)  # checked like the others
            return outcome.ok and faulty.answered["eth_call"] > seen

        returned_after = await until(first_url_answers, tuning.return_limit)
    return Report(fault.value, urls, outcomes, after, returned_after, fault_calls, healthy_answers)


async def killed_node_scenario(tmp_path: Path, urls: int, tuning: Tuning) -> Report:
    """The first provider is an anvil that is killed, then restarted on its port; with two
    URLs the second is a twin chain (the same deployments and funding, so the same
    addresses and amounts).  Amounts are compared with the funded ones: a restarted
    anvil keeps its state but not its history."""
    async with AsyncExitStack() as stack:
        killed = await stack.enter_async_context(AnvilNode(chain_id=POLYGON.chain_id))
        world = await polygon_world(killed.url)
        provider_urls = [killed.url]
        if urls == 2:
            twin = await stack.enter_async_context(AnvilNode(chain_id=POLYGON.chain_id))
            twin_network = (await polygon_world(twin.url)).networks[NETWORK]
            assert replace(twin_network, rpc_url=killed.url) == world.networks[NETWORK]
            provider_urls.append(twin.url)
        truth = ChainTruth(world, None)
        server = await stack.enter_async_context(serving(world, tmp_path, provider_urls, tuning))
        warm = await read_once(server.stub, "wallet", "wal_p1", tuning.deadline, truth)
        assert warm.ok and not warm.wrong, warm
        await killed.stop()
        outcomes = await read_many(server.stub, truth, tuning)
        await killed.start()  # same port, same state
        await mine(killed.url, 3)  # ahead of the twin: a read at its head came from it
        head = int(await rpc_call(killed.url, "eth_blockNumber"), 16)
        after: list[Outcome] = []

        async def served_by_the_restarted_node() -> bool:
            outcome = await read_once(server.stub, "wallet", "wal_p2", tuning.deadline, truth)
            after.append(outcome)
            return outcome.ok and outcome.blocks == [head]

        returned_after = await until(served_by_the_restarted_node, tuning.return_limit)
    return Report("node killed, restarted", urls, outcomes, after, returned_after, 1, urls - 1)
