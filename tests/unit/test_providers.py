"""ProviderPool with fake operations: classification, ranking, resting, Retry-After, hedging,
probes, chain ids and lag.  Rest and latency run on an injected clock; hedging on real
(short) delays, asserting what happened, never how long it took."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import pytest_asyncio

from service.chain.providers import (
    Endpoint,
    HexData,
    ProviderFault,
    ProviderPolicy,
    ProviderPool,
    RpcError,
    _encoded,
    _result,
    _retry_after,
)
from service.errors import ChainUnavailable

CHAIN_ID = 137


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Behaviour = Callable[[Endpoint], Awaitable[Any]]


class Providers:
    """What each provider (1-based) does when asked; ``asked`` records the order."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.asked: list[int] = []
        self.cancelled: list[int] = []
        self.behaviour: dict[int, Behaviour] = {}

    def ok(self, seconds: float = 0.01) -> Behaviour:
        """Answers its own number, taking ``seconds`` on the injected clock."""

        async def answer(endpoint: Endpoint) -> int:
            self.clock.now += seconds
            return number(endpoint)

        return answer

    def fault(self, retry_after: float | None = None) -> Behaviour:
        async def fail(endpoint: Endpoint) -> int:
            raise ProviderFault("down", retry_after)

        return fail

    def sleeps(self, seconds: float, until: asyncio.Event | None = None) -> Behaviour:
        """Answers after ``seconds`` of real time (or when ``until`` is set)."""

        async def slow(endpoint: Endpoint) -> int:
            try:
                if until is not None:
                    await until.wait()
                else:
                    await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                self.cancelled.append(number(endpoint))
                raise
            return number(endpoint)

        return slow

    async def op(self, endpoint: Endpoint) -> int:
        self.asked.append(number(endpoint))
        result: int = await self.behaviour[number(endpoint)](endpoint)
        return result


def number(endpoint: Endpoint) -> int:
    return int(endpoint.name.split()[1])


@pytest.fixture
def chain_ids(monkeypatch: pytest.MonkeyPatch) -> dict[int, str]:
    """eth_chainId per provider (default: the configured chain); no HTTP at all."""
    answers: dict[int, str] = {}

    async def request(self: Endpoint, method: str, params: list[Any]) -> Any:
        assert method == "eth_chainId"
        return answers.get(number(self), hex(CHAIN_ID))

    monkeypatch.setattr(Endpoint, "request", request)
    return answers


@pytest_asyncio.fixture(loop_scope="session")
async def clock() -> AsyncIterator[Clock]:
    yield Clock()


def make_pool(n: int, clock: Clock | None = None, **policy: Any) -> ProviderPool:
    urls = [f"http://provider{i}.invalid/v3/SECRET" for i in range(1, n + 1)]
    settings = {"hedge_floor_seconds": 5.0, "recovery_seconds": 4.0, **policy}
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    return ProviderPool("testnet", urls, ProviderPolicy(**settings), chain_id=CHAIN_ID, **kwargs)


# --- classification --------------------------------------------------------------------------


def error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    "response",
    [
        error(-32005, "request rate exceeded"),
        error(429, "Too Many Requests"),
        error(-32000, "header not found"),
        error(-32000, "missing trie node 1a2b3c (path )"),
        error(-32603, "internal error"),
        error(-32601, "the method eth_call does not exist/is not available"),
        error(-32000, "daily request limit exceeded"),
        error(-32602, "BlockOutOfRangeError: block height is 10 but requested was 13"),
        error(-32000, "unknown block"),
        {"jsonrpc": "2.0", "id": 1, "error": "rate limited, slow down"},
        {"jsonrpc": "2.0", "id": 1},  # neither result nor error
        ["not", "an", "object"],
        "0x1",
        None,
    ],
    ids=lambda r: str(r)[:60],
)
def test_a_provider_that_cannot_answer_now_is_a_fault(response: Any) -> None:
    with pytest.raises(ProviderFault):
        _result(response, "eth_call")


@pytest.mark.parametrize(
    "response",
    [
        error(3, "execution reverted: service unavailable"),  # a revert, whatever it says
        error(-32000, "execution reverted"),
        error(-32602, "invalid argument 0: hex string has length 3, want 40 for common.Address"),
        error(-32000, "insufficient funds for gas * price + value"),
        {"jsonrpc": "2.0", "id": 1, "error": "no such thing"},
    ],
    ids=lambda r: str(r)[:60],
)
def test_a_revert_or_bad_params_is_an_answer(response: Any) -> None:
    with pytest.raises(RpcError):
        _result(response, "eth_call")


def test_a_result_is_returned_as_it_is_even_null() -> None:
    assert _result({"jsonrpc": "2.0", "id": 1, "result": "0x2a"}, "eth_blockNumber") == "0x2a"
    # Whether null is acceptable is the operation's call (the reader says it is not).
    assert _result({"jsonrpc": "2.0", "id": 1, "result": None}, "eth_call") is None


def test_a_fault_message_names_the_method_and_code_only() -> None:
    with pytest.raises(ProviderFault) as caught:
        _result(error(-32005, "limit for key SECRET at https://x.invalid"), "eth_call")
    assert caught.value.reason == "eth_call: JSON-RPC error -32005"


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), (" 120 ", 120.0), ("0", 0.0), (None, None), ("", None), ("soon", None)],
)
def test_retry_after_in_seconds(header: str | None, seconds: float | None) -> None:
    assert _retry_after(header) == seconds


@pytest.mark.parametrize("header", ["-1", "1.5", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_an_unusable_retry_after_is_ignored(header: str) -> None:
    assert _retry_after(header) is None


def test_retry_after_as_an_http_date() -> None:
    later = _retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True))
    assert later is not None and 100 < later <= 120
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait


# --- ranking -------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_healthy_providers_are_asked_in_configured_order(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(3, clock)
    providers = Providers(clock)
    providers.behaviour = {1: providers.ok(), 2: providers.ok(), 3: providers.ok()}
    for _ in range(5):
        assert await pool.run(providers.op, timeout=5) == 1
    assert providers.asked == [1] * 5


@pytest.mark.asyncio(loop_scope="session")
async def test_a_fault_moves_the_same_read_to_the_next_provider(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(3, clock)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.fault(), 3: providers.ok()}
    assert await pool.run(providers.op, timeout=5) == 3
    assert providers.asked == [1, 2, 3]


@pytest.mark.asyncio(loop_scope="session")
async def test_every_provider_failing_is_chain_unavailable_naming_each(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.fault()}
    with pytest.raises(ChainUnavailable) as caught:
        await pool.run(providers.op, timeout=5)
    text = str(caught.value)
    assert "testnet" in text and "provider 1: down" in text and "provider 2: down" in text
    assert "SECRET" not in text and "invalid" not in text


@pytest.mark.asyncio(loop_scope="session")
async def test_a_slow_provider_goes_last_until_its_latency_is_old(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock, recovery_seconds=4.0)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.ok(0.01)}
    await pool.run(providers.op, timeout=5)  # provider 2 has a latency: 10 ms
    clock.now += 1  # provider 1's rest is over; it answers, slowly
    providers.behaviour[1] = providers.ok(0.5)
    assert await pool.run(providers.op, timeout=5) == 1
    providers.asked.clear()
    for _ in range(3):
        assert await pool.run(providers.op, timeout=5) == 2  # 0.5 s > 2 x 10 ms + 50 ms
    clock.now += 4.0  # provider 1's latency is older than recovery_seconds: asked first again
    providers.behaviour[1] = providers.ok(0.01)
    assert await pool.run(providers.op, timeout=5) == 1
    assert await pool.run(providers.op, timeout=5) == 1
    assert providers.asked == [2, 2, 2, 1, 1]


# --- resting and back-off --------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_a_faulty_provider_rests_doubling_up_to_recovery_seconds(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock, recovery_seconds=3.0)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.ok(0.0)}
    asked_at: list[float] = []
    start = clock.now
    while clock.now - start < 12:
        before = len(providers.asked)
        await pool.run(providers.op, timeout=5)
        if 1 in providers.asked[before:]:
            asked_at.append(round(clock.now - start, 1))
        clock.now += 0.1
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(asked_at)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 3.0]  # 0.5 s, doubling, capped at recovery_seconds
    assert set(gaps[4:]) == {3.0}


@pytest.mark.asyncio(loop_scope="session")
async def test_a_recovered_provider_has_traffic_back_within_recovery_seconds(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock, recovery_seconds=2.0)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.ok(0.0)}
    for _ in range(100):  # 10 s of faults: the longest rest
        await pool.run(providers.op, timeout=5)
        clock.now += 0.1
    providers.behaviour[1] = providers.ok(0.0)
    recovered = clock.now
    while await pool.run(providers.op, timeout=5) != 1:
        clock.now += 0.1
    assert clock.now - recovered <= 2.0
    assert await pool.run(providers.op, timeout=5) == 1  # and it stays first


@pytest.mark.asyncio(loop_scope="session")
async def test_resting_providers_are_asked_rather_than_failing(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.fault()}
    with pytest.raises(ChainUnavailable):
        await pool.run(providers.op, timeout=5)  # both rest now
    providers.behaviour[2] = providers.ok()
    providers.asked.clear()
    assert await pool.run(providers.op, timeout=5) == 2
    assert providers.asked == [1, 2]  # soonest rest end first (provider 1 failed first)


# --- Retry-After honoured --------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_a_provider_that_asked_to_wait_is_not_asked_before_then(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(1, clock, recovery_seconds=1.0)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(retry_after=5.0)}
    with pytest.raises(ChainUnavailable):
        await pool.run(providers.op, timeout=5)
    providers.behaviour[1] = providers.ok()
    clock.now += 4.9
    with pytest.raises(ChainUnavailable, match="asked to wait"):
        await pool.run(providers.op, timeout=5)
    assert providers.asked == [1]
    clock.now += 0.1
    assert await pool.run(providers.op, timeout=5) == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_a_huge_retry_after_is_capped(clock: Clock, chain_ids: dict[int, str]) -> None:
    pool = make_pool(1, clock, max_retry_after_seconds=30.0)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(retry_after=86400.0)}
    with pytest.raises(ChainUnavailable):
        await pool.run(providers.op, timeout=5)
    providers.behaviour[1] = providers.ok()
    clock.now += 30.0
    assert await pool.run(providers.op, timeout=5) == 1


# --- hedging ---------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_a_slow_read_is_hedged_and_the_first_answer_wins(chain_ids: dict[int, str]) -> None:
    pool = make_pool(2, hedge_floor_seconds=0.02)
    providers = Providers(Clock())
    providers.behaviour = {1: providers.sleeps(30.0), 2: providers.sleeps(0.0)}
    assert await pool.run(providers.op, timeout=10) == 2
    assert pool.hedges == 1
    assert providers.asked == [1, 2] and providers.cancelled == [1]
    # Silent past its hedge delay while another answered: a fault, so it rests.
    providers.asked.clear()
    assert await pool.run(providers.op, timeout=10) == 2
    assert providers.asked == [2] and pool.hedges == 1
    await pool.aclose()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_hedge_delay_is_three_times_the_usual_latency(chain_ids: dict[int, str]) -> None:
    pool = make_pool(2, hedge_floor_seconds=0.01)
    providers = Providers(Clock())
    # Hedged at the floor, but the hedge faults: provider 1's answer (0.1 s) is its latency.
    providers.behaviour = {1: providers.sleeps(0.1), 2: providers.fault()}
    assert await pool.run(providers.op, timeout=10) == 1
    assert pool.hedges == 1
    providers.behaviour = {1: providers.sleeps(0.15), 2: providers.sleeps(0.0)}
    assert await pool.run(providers.op, timeout=10) == 1  # within 3 x 0.1 s: no hedge
    assert pool.hedges == 1
    providers.behaviour[1] = providers.sleeps(30.0)
    assert await pool.run(providers.op, timeout=10) == 2  # past it: hedged
    assert pool.hedges == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_a_hedge_that_faults_moves_on_at_once(chain_ids: dict[int, str]) -> None:
    pool = make_pool(3, hedge_floor_seconds=0.02)
    providers = Providers(Clock())
    providers.behaviour = {
        1: providers.sleeps(30.0),
        2: providers.fault(),
        3: providers.sleeps(0.0),
    }
    assert await pool.run(providers.op, timeout=10) == 3
    assert providers.asked == [1, 2, 3] and pool.hedges == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_everything_stays_inside_the_callers_deadline(chain_ids: dict[int, str]) -> None:
    pool = make_pool(2, hedge_floor_seconds=0.02)
    providers = Providers(Clock())
    providers.behaviour = {1: providers.sleeps(30.0), 2: providers.sleeps(30.0)}
    with pytest.raises(ChainUnavailable, match=r"testnet.*timed out after 0\.2s"):
        await pool.run(providers.op, timeout=0.2)
    assert sorted(providers.cancelled) == [1, 2]


# --- one probe at a time ---------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_a_provider_back_from_rest_is_probed_by_one_request_at_a_time(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock)
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.ok(0.0)}
    await pool.run(providers.op, timeout=5)
    clock.now += 1.0  # its rest is over
    release = asyncio.Event()
    providers.behaviour[1] = providers.sleeps(0, until=release)
    providers.asked.clear()
    probe = asyncio.create_task(pool.run(providers.op, timeout=5))
    await asyncio.sleep(0.01)
    others = [await pool.run(providers.op, timeout=5) for _ in range(3)]
    release.set()
    assert await probe == 1 and others == [2, 2, 2]
    assert providers.asked == [1, 2, 2, 2]
    assert await pool.run(providers.op, timeout=5) == 1  # the probe succeeded: first again


# --- chain id --------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_a_provider_serving_another_chain_is_never_used(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    chain_ids[2] = "0x1"
    pool = make_pool(2, clock)
    await pool.check_chains(timeout=1)
    assert pool.wrong_chain == {1: 1}
    providers = Providers(clock)
    providers.behaviour = {1: providers.fault(), 2: providers.ok()}
    with pytest.raises(ChainUnavailable):
        await pool.run(providers.op, timeout=5)
    clock.now += 1000
    with pytest.raises(ChainUnavailable):
        await pool.run(providers.op, timeout=5)
    assert providers.asked == [1, 1]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_chain_id_is_checked_before_first_use_and_a_mismatch_sticks(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock)  # no check at start (as if it did not answer then)
    chain_ids[1] = "0x1"
    providers = Providers(clock)
    providers.behaviour = {1: providers.ok(), 2: providers.ok()}
    assert await pool.run(providers.op, timeout=5) == 2
    assert pool.wrong_chain == {0: 1}
    clock.now += 1000  # long past any rest: still never asked
    chain_ids[1] = hex(CHAIN_ID)
    assert await pool.run(providers.op, timeout=5) == 2
    assert providers.asked == [2, 2]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_garbled_chain_id_is_a_fault_not_a_mismatch(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    chain_ids[1] = "0xZZ"
    pool = make_pool(2, clock)
    providers = Providers(clock)
    providers.behaviour = {1: providers.ok(), 2: providers.ok()}
    assert await pool.run(providers.op, timeout=5) == 2
    assert pool.wrong_chain == {}
    chain_ids[1] = hex(CHAIN_ID)
    clock.now += 1.0
    assert await pool.run(providers.op, timeout=5) == 1


# --- lag -------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_a_provider_too_far_behind_the_best_head_is_a_fault(
    clock: Clock, chain_ids: dict[int, str]
) -> None:
    pool = make_pool(2, clock, max_lag_blocks=5)
    heads = {1: 100, 2: 100}

    async def head(endpoint: Endpoint) -> int:
        endpoint.note_head(heads[number(endpoint)])
        return number(endpoint)

    assert await pool.run(head, timeout=5) == 1
    heads[1] = 95  # 5 behind: within max_lag_blocks
    assert await pool.run(head, timeout=5) == 1
    heads[1] = 94  # 6 behind the best head seen (100)
    assert await pool.run(head, timeout=5) == 2
    heads[2] = 103
    clock.now += 1.0
    heads[1] = 98  # caught up to within 5 of 103
    assert await pool.run(head, timeout=5) == 1


@pytest.mark.parametrize(
    "to",
    ["0x" + "ab" * 20, "\0hex\0", '"data": ""', "0x\u00e9"],
    ids=["plain", "stand-in", "quotes", "escape"],
)
def test_calldata_spliced_into_the_body_is_the_json_of_the_body(to: str) -> None:
    """An eth_call's HexData goes into the body unscanned; the body is the same JSON."""
    call = {"to": to, "data": HexData.of(bytes(range(256)) * 40)}
    body = {"jsonrpc": "2.0", "id": 7, "method": "eth_call", "params": [call, "latest"]}
    assert json.loads(_encoded(body)) == body
    assert _encoded(body) == json.dumps(body).encode()
    plain = {**body, "params": [{**call, "data": str(call["data"])}, "latest"]}
    assert _encoded(plain) == _encoded(body)  # a plain str is dumped as before


@pytest.mark.parametrize(
    ("message", "rests"),
    [
        ("missing trie node 1a2b3c (path )", False),
        ("historical state 0xabc is not available", False),
        ("state at block 12 is not available, pruned", False),
        ("header not found", True),  # may be a node behind: rests as before
    ],
)
def test_a_pruned_state_is_a_fault_saying_so(message: str, rests: bool) -> None:
    with pytest.raises(ProviderFault) as caught:
        _result(error(-32000, message), "eth_call")
    assert caught.value.state_missing and caught.value.rest is rests


def test_other_faults_are_not_a_pruned_state() -> None:
    for message in ("the method eth_call does not exist/is not available", "rate limit"):
        with pytest.raises(ProviderFault) as caught:
            _result(error(-32601, message), "eth_call")
        assert not caught.value.state_missing
