"""The provider cross-check with fake nodes: majority, demotion, failover, the hash cache.

Each fake provider answers ``eth_getBlockByNumber`` from its own table of block
hashes (no HTTP); the operation under test is what a snapshot read does: read
at a block, then ``CrossCheck.verify`` before serving.
"""

from __future__ import annotations

import logging
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from service.chain.cross_check import HASH_TTL_SECONDS, CrossCheck, majority
from service.chain.providers import Endpoint, ProviderFault, ProviderPolicy, ProviderPool
from service.chain.reader import _block_hash
from service.errors import ChainUnavailable, ConfigError
from service.settings import Settings, parse_settings
from service.settings.render import render_settings

CHAIN_ID = 137
A, B, C = "0x" + "aa" * 32, "0x" + "bb" * 32, "0x" + "cc" * 32

on_loop = pytest.mark.asyncio(loop_scope="session")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Nodes:
    """Per provider (1-based): block number -> hash (absent: it lacks the block)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.blocks: dict[int, dict[int, Any]] = {}
        self.asked: Counter[int] = Counter()  # eth_getBlockByNumber calls per provider

        async def request(endpoint: Endpoint, method: str, params: list[Any]) -> Any:
            provider = endpoint.position + 1
            if method == "eth_chainId":
                return hex(CHAIN_ID)
            assert method == "eth_getBlockByNumber"
            self.asked[provider] += 1
            number = int(params[0], 16)
            block_hash = self.blocks[provider].get(number)
            if block_hash is None:
                return None
            return {"number": hex(number), "hash": block_hash, "timestamp": "0x1"}

        monkeypatch.setattr(Endpoint, "request", request)


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> Nodes:
    return Nodes(monkeypatch)


def setup(n: int, verify: int, clock: Clock) -> tuple[ProviderPool, CrossCheck]:
    urls = [f"http://provider{i}.invalid/v3/SECRET" for i in range(1, n + 1)]
    policy = ProviderPolicy(hedge_floor_seconds=5.0, recovery_seconds=4.0)
    pool = ProviderPool("testnet", urls, policy, chain_id=CHAIN_ID, clock=clock)
    return pool, CrossCheck(pool, verify, _block_hash, clock=clock)


async def served_by(pool: ProviderPool, check: CrossCheck, block: int | dict[int, int] = 7) -> int:
    """A snapshot-like read at ``block`` (or per provider), cross-checked; who served it."""

    async def read(endpoint: Endpoint) -> int:
        at = block if isinstance(block, int) else block[endpoint.position + 1]
        await check.verify(endpoint, at, timeout=5)
        return endpoint.position + 1

    return await pool.run(read, timeout=5)


# --- the majority rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hashes", "winner", "outvoted"),
    [
        ({0: A, 1: A}, A, set()),
        ({0: A, 1: B}, None, set()),  # two that disagree: nobody can say which is wrong
        ({0: A, 1: A, 2: B}, A, {2}),
        ({0: B, 1: A, 2: A}, A, {0}),
        ({0: A, 1: B, 2: C}, None, set()),
        ({0: A, 1: A, 2: B, 3: B}, None, set()),  # a tie is no majority
        ({0: A, 1: A, 2: A, 3: B}, A, {3}),
        ({}, None, set()),
    ],
)
def test_a_strict_majority_wins_and_outvotes_the_others(
    hashes: dict[int, str], winner: str | None, outvoted: set[int]
) -> None:
    assert majority(hashes) == (winner, frozenset(outvoted))


# --- agreeing, disagreeing -----------------------------------------------------------------


@on_loop
async def test_two_providers_that_agree_serve_and_the_hashes_are_reused_briefly(
    nodes: Nodes,
) -> None:
    clock = Clock()
    pool, check = setup(2, 2, clock)
    nodes.blocks = {1: {7: A}, 2: {7: A}}
    assert await served_by(pool, check) == 1
    assert nodes.asked == {1: 1, 2: 1}
    assert await served_by(pool, check) == 1  # the same block again: from the cache
    assert nodes.asked == {1: 1, 2: 1}
    clock.now += HASH_TTL_SECONDS + 0.1
    assert await served_by(pool, check) == 1
    assert nodes.asked == {1: 2, 2: 2}
    assert pool.disagreements == 0


@on_loop
async def test_two_providers_that_disagree_serve_nothing_and_neither_rests(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock()
    pool, check = setup(2, 2, clock)
    nodes.blocks = {1: {7: A}, 2: {7: B}}
    with pytest.raises(ChainUnavailable) as caught:
        await served_by(pool, check)
    text = str(caught.value)
    assert "testnet" in text and "providers disagree at block 7" in text
    assert "SECRET" not in text
    assert pool.disagreements == 2  # asked of provider 1's read, then of provider 2's
    assert "providers disagree at block 7" in caplog.text and "no majority" in caplog.text
    assert "SECRET" not in caplog.text
    # Nobody was rested: once they agree, provider 1 serves again at once.
    nodes.blocks[2][7] = A
    assert await served_by(pool, check) == 1


@on_loop
async def test_an_outvoted_verifier_is_demoted_and_the_snapshot_served(nodes: Nodes) -> None:
    clock = Clock()
    pool, check = setup(3, 3, clock)
    nodes.blocks = {1: {7: A}, 2: {7: B}, 3: {7: A}}
    assert await served_by(pool, check) == 1
    assert pool.disagreements == 1

    # Provider 2 rests: a read that provider 1 cannot serve goes to provider 3 first.
    order: list[int] = []

    async def first_fails(endpoint: Endpoint) -> int:
        order.append(endpoint.position + 1)
        if endpoint.position == 0:
            raise ProviderFault("down")
        return endpoint.position + 1

    assert await pool.run(first_fails, timeout=5) == 3
    assert order == [1, 3]


@on_loop
async def test_an_outvoted_provider_does_not_serve_its_snapshot(nodes: Nodes) -> None:
    clock = Clock()
    pool, check = setup(4, 3, clock)
    nodes.blocks = {1: {7: B}, 2: {7: A}, 3: {7: A}, 4: {7: A}}
    # Provider 1 is outvoted by 2 and 3: its read moves on to provider 2, checked by 3
    # and by 4 (provider 1 rests, so it is asked last).
    assert await served_by(pool, check) == 2
    assert pool.disagreements == 1
    asked = dict(nodes.asked)
    assert await served_by(pool, check) == 2  # provider 1 rests; 2, 3 and 4 agree (cached)
    assert nodes.asked == asked


@on_loop
async def test_a_tie_between_two_is_broken_by_a_third(nodes: Nodes) -> None:
    """verify_providers = 2 of three URLs, the first one wrong: provider 2 disagrees with
    it, provider 3 breaks the tie; provider 1 rests and provider 2 serves."""
    clock = Clock()
    pool, check = setup(3, 2, clock)
    nodes.blocks = {1: {7: B}, 2: {7: A}, 3: {7: A}}
    assert await served_by(pool, check) == 2
    assert pool.disagreements == 1
    assert nodes.asked == {1: 1, 2: 1, 3: 1}
    assert await served_by(pool, check) == 2  # provider 1 rests; 2 and 3 agree (cached)
    assert nodes.asked == {1: 1, 2: 1, 3: 1}


@on_loop
async def test_three_different_answers_serve_nothing(nodes: Nodes) -> None:
    clock = Clock()
    pool, check = setup(3, 2, clock)
    nodes.blocks = {1: {7: A}, 2: {7: B}, 3: {7: C}}
    with pytest.raises(ChainUnavailable, match="providers disagree at block 7"):
        await served_by(pool, check)
    assert pool.disagreements == 3  # each provider's read was checked and refused


@on_loop
async def test_a_verifier_without_the_block_cannot_vouch_so_the_older_block_serves(
    nodes: Nodes,
) -> None:
    """Provider 1 is a block ahead: provider 2 lacks block 8, so provider 1's read is not
    served; provider 2's, at block 7 which both have, is."""
    clock = Clock()
    pool, check = setup(2, 2, clock)
    nodes.blocks = {1: {7: A, 8: B}, 2: {7: A}}
    assert await served_by(pool, check, {1: 8, 2: 7}) == 2
    assert pool.disagreements == 0
    assert await served_by(pool, check, {1: 7, 2: 7}) == 1  # provider 1 was not rested


@on_loop
async def test_a_disagreement_is_decided_on_fresh_hashes(nodes: Nodes) -> None:
    """Hashes cached before a reorg disagree with a fresh one: read again, then decide."""
    clock = Clock()
    pool, check = setup(3, 2, clock)
    nodes.blocks = {1: {7: A}, 2: {7: A}, 3: {7: C}}
    assert await served_by(pool, check) == 1  # cached: provider 1 and 2 say A
    nodes.blocks = {1: {7: C}, 2: {7: C}, 3: {7: C}}  # a reorg replaced block 7

    async def on_provider_3(endpoint: Endpoint) -> int:
        if endpoint.position != 2:
            raise ProviderFault("not this one", rest=False)
        await check.verify(endpoint, 7, timeout=5)
        return 3

    assert await pool.run(on_provider_3, timeout=5) == 3
    assert pool.disagreements == 0


@on_loop
async def test_a_malformed_hash_is_the_verifiers_fault_and_the_next_one_is_asked(
    nodes: Nodes,
) -> None:
    clock = Clock()
    pool, check = setup(3, 2, clock)
    nodes.blocks = {1: {7: A}, 2: {7: "0x1234"}, 3: {7: A}}
    assert await served_by(pool, check) == 1
    assert nodes.asked == {1: 1, 2: 1, 3: 1}


@on_loop
async def test_too_few_providers_answering_is_no_verification(nodes: Nodes) -> None:
    clock = Clock()
    pool, check = setup(2, 2, clock)
    nodes.blocks = {1: {7: A}, 2: {}}  # provider 2 never has it
    with pytest.raises(ChainUnavailable, match="could not be cross-checked"):
        await served_by(pool, check)
    assert pool.disagreements == 0


def test_a_cross_check_needs_two_providers() -> None:
    pool, _ = setup(2, 2, Clock())
    with pytest.raises(ValueError):
        CrossCheck(pool, 1, _block_hash)


# --- configuration ---------------------------------------------------------------------------

NETWORK_TOML = """
[[networks]]
name = "polygon"
chain_id = 137
rpc_urls = ["http://a.invalid", "http://b.invalid"]
{extra}

[[networks.tokens]]
symbol = "POL"
native = true
decimals = 18
price = {{ peg = "1" }}
"""


def load(extra: str) -> Settings:
    return parse_settings(tomllib.loads(NETWORK_TOML.format(extra=extra)), base_dir=Path("."))


def test_verify_providers_is_off_by_default_and_at_most_the_number_of_urls() -> None:
    assert load("").networks[0].verify_providers == 1
    settings = load("verify_providers = 2")
    assert settings.networks[0].verify_providers == 2
    assert "verify_providers = 2" in render_settings(settings)
    for bad, reason in (
        ("3", "between 1 (off) and the number of rpc_urls (2)"),
        ("0", "between 1"),
        ("true", "integer"),
        ('"2"', "integer"),
    ):
        with pytest.raises(ConfigError) as caught:
            load(f"verify_providers = {bad}")
        assert caught.value.key == "networks[0].verify_providers"
        assert reason in caught.value.reason
