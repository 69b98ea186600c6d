"""Checks beyond what providers offer, against real anvil nodes.

* Token metadata at start: ``balances serve`` refuses a configuration whose
  ``decimals`` or symbol is not what the token contract says, in one line naming
  the token and both values; ``onchain_symbol`` accepts an intended label.
* The provider cross-check (``verify_providers``): proxies in front of two anvil
  chains with the same contracts and balances but different block hashes (the
  second's clock runs an hour ahead).  Providers that disagree serve nothing
  (UNAVAILABLE naming the network, never an amount); providers of the same chain
  serve; with three, the odd one is outvoted and demoted, and no amount is ever
  the odd chain's (it holds a different balance).  Counted at the proxies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.devchain.anvil import AnvilNode
from service.devchain.deploy import mine, mint
from service.devchain.rpc import rpc_call
from service.devchain.world import DemoWorld, demo_tokens
from service.domain import Token
from service.grpc_server import create_server
from service.wiring import Service, open_service
from tests.support.cli import assert_one_line_error, run_balances
from tests.support.provider_faults import NETWORK, ChainTruth, holder, polygon_world, read_once
from tests.support.rpc_proxy import CountingProxy
from tests.support.stack import keyed_channel, running_stack, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

DEADLINE = 5.0


# --- token metadata at start -----------------------------------------------------------------


def polygon_tokens(world: DemoWorld, **changes: dict[str, object]) -> tuple[Token, ...]:
    """The demo polygon tokens (USDC, USDT, POL) with fields of some replaced, by currency."""
    return tuple(
        replace(t, **changes.get(t.currency, {}))  # type: ignore[arg-type]
        for t in demo_tokens(world.networks["polygon"])
    )


async def serve_refusal(world: DemoWorld, tmp_path: Path, tokens: tuple[Token, ...]) -> str:
    """``balances serve`` with polygon's ``tokens``: it must refuse; its one line."""
    async with CountingProxy(world.networks["polygon"].rpc_url) as proxy:
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [proxy.url], "ethereum": [world.networks["ethereum"].rpc_url]},
            network_changes={"polygon": {"tokens": tokens}},
        )
        code, stdout, stderr = await run_balances(
            "serve", "--config", str(config.path), cwd=tmp_path
        )
        assert proxy.counts["eth_call"] >= 1  # it really asked the token contracts
    assert code == 2
    line = assert_one_line_error(code, stderr, "balances: configuration error: ")
    assert "127.0.0.1" not in line and "serving" not in stdout + stderr
    return line


async def test_wrong_decimals_refuse_to_start_naming_the_token_and_both_values(
    world: DemoWorld, tmp_path: Path
) -> None:
    line = await serve_refusal(world, tmp_path, polygon_tokens(world, USDC={"decimals": 18}))
    assert line == (
        "balances: configuration error: networks.polygon.tokens[0].decimals: "
        "the token contract says 6, the configuration says 18"
    )


async def test_a_wrong_symbol_refuses_to_start_and_onchain_symbol_accepts_the_label(
    world: DemoWorld, tmp_path: Path
) -> None:
    relabelled = polygon_tokens(world, USDT={"currency": "USDT0"})
    line = await serve_refusal(world, tmp_path / "refused", relabelled)
    assert line == (
        "balances: configuration error: networks.polygon.tokens[1].symbol: "
        'the token contract\'s symbol is "USDT", the configuration says "USDT0"; '
        'set onchain_symbol = "USDT" if the label is intended'
    )

    intended = polygon_tokens(world, USDT={"currency": "USDT0", "onchain_symbol": "USDT"})
    async with running_stack(
        world, tmp_path / "accepted", network_changes={"polygon": {"tokens": intended}}
    ) as stack:
        response = await stack.stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon")
        )
    amounts = {b.currency: b.amount for b in response.balances}
    assert amounts == {"USDC": "42.00", "USDT0": "7.125", "POL": "0.00"}


# --- the provider cross-check ----------------------------------------------------------------


@dataclass
class Twins:
    """Chain A (the truth) and chain B: the same contracts and balances, other block hashes."""

    a: AnvilNode
    b: AnvilNode
    world: DemoWorld  # chain A's


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def twins() -> AsyncIterator[Twins]:
    async with AnvilNode(chain_id=31337) as a, AnvilNode(chain_id=31337) as b:
        await rpc_call(b.url, "evm_increaseTime", [3600])  # every block of B: another hash
        world = await polygon_world(a.url)
        twin = (await polygon_world(b.url)).networks[NETWORK]
        assert replace(twin, rpc_url=a.url) == world.networks[NETWORK]  # same addresses
        head = await rpc_call(a.url, "eth_blockNumber")
        assert head == await rpc_call(b.url, "eth_blockNumber")
        block_a = await rpc_call(a.url, "eth_getBlockByNumber", [head, False])
        block_b = await rpc_call(b.url, "eth_getBlockByNumber", [head, False])
        assert block_a["hash"] != block_b["hash"]
        yield Twins(a, b, world)


@dataclass
class Server:
    service: Service
    stub: balances_pb2_grpc.BalancesServiceStub

    @property
    def disagreements(self) -> int:
        return self.service.readers[NETWORK].providers.disagreements


@asynccontextmanager
async def serving(
    world: DemoWorld, tmp_path: Path, proxies: Sequence[CountingProxy], verify: int
) -> AsyncIterator[Server]:
    """A real gRPC server reading ``world``'s polygon through ``proxies``, in order, with
    ``verify_providers = verify``; every request reads the chain; counts reset after start."""
    config = await write_stack_config(
        world,
        tmp_path,
        {NETWORK: [p.url for p in proxies]},
        network_changes={NETWORK: {"verify_providers": verify, "recovery_seconds": 10}},
        cache_ttl_seconds=0.001,
        rpc_timeout_seconds=DEADLINE,
    )
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(open_service(config.settings))
        server, port, _health = create_server(service, config.settings.listen)
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = keyed_channel(f"127.0.0.1:{port}", config.api_key)
        stack.push_async_callback(channel.close)
        for proxy in proxies:
            proxy.reset()
        yield Server(service, balances_pb2_grpc.BalancesServiceStub(channel))


READS = [("wallet", "wal_p1"), ("customer", "cus_p"), ("wallet", "wal_p2"), ("wallet", "wal_q1")]


async def test_providers_of_different_chains_serve_nothing(
    twins: Twins, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service")
    truth = ChainTruth(twins.world, twins.a.url)
    async with CountingProxy(twins.a.url) as a, CountingProxy(twins.b.url) as b:
        # Unchecked, chain B's answers are served as if they were A's: the hazard.
        async with serving(twins.world, tmp_path / "off", [b, a], verify=1) as server:
            unchecked = await read_once(server.stub, "wallet", "wal_p1", DEADLINE, truth)
            assert unchecked.ok and b.counts["eth_call"] == 1

        async with serving(twins.world, tmp_path / "on", [a, b], verify=2) as server:
            outcomes = [
                await read_once(server.stub, kind, ident, DEADLINE, truth) for kind, ident in READS
            ]
            disagreements = server.disagreements
    await truth.aclose()
    for outcome in outcomes:
        assert not outcome.ok and outcome.code == "UNAVAILABLE", outcome
        assert "network polygon" in outcome.details
        assert "providers disagree at block" in outcome.details
        assert "SECRET" not in outcome.details and "127.0.0.1" not in outcome.details
    assert disagreements >= len(READS)
    assert a.counts["eth_call"] >= len(READS) and b.counts["eth_call"] >= len(READS)
    assert b.counts["eth_getBlockByNumber"] >= 1
    assert "providers disagree at block" in caplog.text and "SECRET" not in caplog.text


async def test_providers_of_the_same_chain_agree_and_serve(twins: Twins, tmp_path: Path) -> None:
    truth = ChainTruth(twins.world, twins.a.url)
    async with (
        CountingProxy(twins.a.url) as first,
        CountingProxy(twins.a.url) as second,
        serving(twins.world, tmp_path, [first, second], verify=2) as server,
    ):
        outcomes = [
            await read_once(server.stub, kind, ident, DEADLINE, truth) for kind, ident in READS
        ]
        assert server.disagreements == 0
    await truth.aclose()
    assert all(o.ok and not o.wrong and not o.stale for o in outcomes), outcomes
    # The first URL served every snapshot; the second only vouched for its block.
    assert first.counts["eth_call"] == len(READS)
    assert second.counts["eth_call"] == 0
    assert second.counts["eth_getBlockByNumber"] >= 1
    served = {b for o in outcomes for b in o.blocks}
    vouched = {int(params[0], 16) for params in second.calls("eth_getBlockByNumber")}
    assert served <= vouched


@pytest_asyncio.fixture(loop_scope="session")
async def odd_chain(twins: Twins) -> AsyncIterator[Twins]:
    """Chain B holding a different balance for wal_p2 at the same height as chain A."""
    usdc = twins.world.networks[NETWORK].tokens["USDC"]
    await mint(twins.b.url, usdc, holder(2), 1)
    await mine(twins.a.url, 1)
    yield twins


@pytest.mark.parametrize(
    ("order", "verify"),
    [("A B A", 2), ("B A A", 2), ("A B A", 3)],
    ids=["odd-verifier-of-two", "odd-first-of-two", "odd-verifier-of-three"],
)
async def test_with_three_providers_the_odd_one_is_outvoted_and_demoted(
    odd_chain: Twins,
    tmp_path: Path,
    order: str,
    verify: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service")
    twins = odd_chain
    truth = ChainTruth(twins.world, twins.a.url)
    async with AsyncExitStack() as stack:
        proxies = [
            await stack.enter_async_context(
                CountingProxy(twins.a.url if kind == "A" else twins.b.url)
            )
            for kind in order.split()
        ]
        odd = proxies[order.split().index("B")]
        server = await stack.enter_async_context(
            serving(twins.world, tmp_path, proxies, verify=verify)
        )
        outcomes = [
            await read_once(server.stub, kind, ident, DEADLINE, truth) for kind, ident in READS
        ]
        disagreements = server.disagreements
    await truth.aclose()
    # Every read served, and never chain B's wal_p2 balance (it differs from A's).
    assert all(o.ok and not o.stale for o in outcomes), outcomes
    assert [w for o in outcomes for w in o.wrong] == []
    assert disagreements >= 1
    assert odd.counts["eth_getBlockByNumber"] >= 1  # it was asked to vouch, and outvoted
    assert "outvoted: provider" in caplog.text
    position = order.split().index("B") + 1
    assert f"provider {position} " in caplog.text and "hash outvoted" in caplog.text
    if order.startswith("A"):
        assert odd.counts["eth_call"] == 0  # the healthy first URL served every snapshot
    assert "SECRET" not in caplog.text
