"""The call quotas without a server (token buckets, concurrency counts, waits, tenants, the
[limits] table) and the refusal's RetryInfo as gRPC and REST carry it."""

from __future__ import annotations

import asyncio
import json
import tomllib
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from service.api.retry_info import retry_info_trailer
from service.errors import ConfigError, RateLimited
from service.gateway.errors import details_from_trailers, error_response
from service.quotas import (
    BUSY_RETRY_SECONDS,
    MAX_WAIT_SECONDS,
    CallKind,
    MemoryCallQuotas,
    Quota,
    QuotaPolicy,
)
from service.settings import parse_settings
from service.settings.model import LimitsSettings, TenantLimitsSettings
from service.settings.render import render_settings

aio = pytest.mark.asyncio(loop_scope="session")

UNARY = CallKind.UNARY
STREAM = CallKind.STREAM
QUOTA = Quota(requests_per_second=10, burst=5, max_in_flight=3, max_streams=2)
ROOMY = Quota(requests_per_second=1000, burst=1000, max_in_flight=1000, max_streams=1000)
ONE_AT_A_TIME = Quota(requests_per_second=1000, burst=1000, max_in_flight=1, max_streams=1)
SLOW = Quota(requests_per_second=0.1, burst=1, max_in_flight=5, max_streams=5)
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
IMPATIENT = 0.0  # a caller with no time to wait: every call is admitted or refused at once


class Clock:
    """Monotonic seconds that move only when the test, or a waiting call, says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def quotas(policy: QuotaPolicy | Quota = QUOTA) -> tuple[MemoryCallQuotas, Clock]:
    clock = Clock()
    if isinstance(policy, Quota):
        policy = QuotaPolicy(policy)
    return MemoryCallQuotas(policy, clock, clock.sleep, share=lambda: 1.0), clock


async def call(
    limits: MemoryCallQuotas,
    key: str = "k1",
    tenant: str = "t",
    time_left: float | None = IMPATIENT,
) -> None:
    """One unary call that ends at once."""
    async with limits.admit(tenant, key, UNARY, time_left=time_left):
        pass


async def refused(
    limits: MemoryCallQuotas, key: str = "k1", time_left: float | None = IMPATIENT
) -> RateLimited:
    with pytest.raises(RateLimited) as raised:
        await call(limits, key, time_left=time_left)
    return raised.value


async def calls_admitted(limits: MemoryCallQuotas, key: str = "k1", tenant: str = "t") -> int:
    """How many impatient unary calls in a row get in now (stops at the first refusal)."""
    admitted = 0
    while admitted < 10_000:
        try:
            await call(limits, key, tenant)
        except RateLimited:
            return admitted
        admitted += 1
    raise AssertionError("never refused")


@aio
async def test_a_burst_is_admitted_and_the_next_call_refused_with_the_time_to_one_token() -> None:
    limits, _ = quotas()
    assert await calls_admitted(limits) == QUOTA.burst
    error = await refused(limits)
    assert error.retry_after == pytest.approx(1 / QUOTA.requests_per_second)
    assert "k1" in str(error) and "10 requests per second (burst 5)" in str(error)


@aio
async def test_the_bucket_refills_at_the_sustained_rate_and_never_above_the_burst() -> None:
    limits, clock = quotas()
    await calls_admitted(limits)
    clock.now += 0.25  # 2.5 tokens at 10/s
    assert await calls_admitted(limits) == 2
    assert (await refused(limits)).retry_after == pytest.approx(0.05)  # half a token missing
    clock.now += 3600
    assert await calls_admitted(limits) == QUOTA.burst


@aio
async def test_a_clock_that_steps_back_takes_no_tokens() -> None:
    limits, clock = quotas()
    await call(limits)
    clock.now -= 50
    assert await calls_admitted(limits) == QUOTA.burst - 1


@aio
async def test_the_retry_delay_is_rounded_up_to_a_millisecond() -> None:
    limits, _ = quotas(Quota(requests_per_second=3, burst=1, max_in_flight=1, max_streams=1))
    await call(limits)
    assert (await refused(limits)).retry_after == 0.334


@aio
async def test_keys_are_limited_apart() -> None:
    limits, _ = quotas()
    await calls_admitted(limits, "k1")
    await refused(limits, "k1")
    assert await calls_admitted(limits, "k2") == QUOTA.burst
    assert await calls_admitted(limits, "k3", tenant="other") == QUOTA.burst


@aio
async def test_a_tenant_quota_applies_to_its_keys_and_the_default_to_the_rest() -> None:
    acme = Quota(requests_per_second=10, burst=8, max_in_flight=3, max_streams=2)
    limits, _ = quotas(QuotaPolicy(QUOTA, {"acme": acme}))
    assert await calls_admitted(limits, "a1", tenant="acme") == 8
    assert await calls_admitted(limits, "a2", tenant="acme") == 8
    assert await calls_admitted(limits, "d1", tenant="default") == QUOTA.burst


@aio
async def test_calls_in_flight_are_capped_and_their_places_given_back() -> None:
    limits, _ = quotas(Quota(requests_per_second=1, burst=100, max_in_flight=3, max_streams=1))
    async with AsyncExitStack() as held:
        for _ in range(3):
            await held.enter_async_context(limits.admit("t", "k1", UNARY))
        error = await refused(limits)
        assert error.retry_after == BUSY_RETRY_SECONDS
        assert "3 calls in flight" in str(error)
        await call(limits, "k2")  # another key's places are its own
    assert await calls_admitted(limits) == 100 - 3  # the refusal took no token


@aio
async def test_a_call_that_fails_gives_its_place_back() -> None:
    limits, _ = quotas(ONE_AT_A_TIME)
    with pytest.raises(ValueError):
        async with limits.admit("t", "k1", UNARY):
            raise ValueError("the servicer failed")
    await call(limits)


@aio
async def test_a_cancelled_call_gives_its_place_back() -> None:
    limits, _ = quotas(ONE_AT_A_TIME)
    entered = asyncio.Event()

    async def slow_call() -> None:
        async with limits.admit("t", "k1", UNARY):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(slow_call())
    await entered.wait()
    await refused(limits)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await call(limits)


@aio
async def test_open_streams_have_their_own_quota_and_leave_the_unary_one_alone() -> None:
    limits, _ = quotas(Quota(requests_per_second=1, burst=100, max_in_flight=3, max_streams=2))
    async with AsyncExitStack() as held:
        for _ in range(2):
            await held.enter_async_context(limits.admit("t", "k1", STREAM))
        with pytest.raises(RateLimited, match="2 watch streams open") as raised:
            await held.enter_async_context(limits.admit("t", "k1", STREAM, time_left=IMPATIENT))
        assert raised.value.retry_after == BUSY_RETRY_SECONDS
        async with AsyncExitStack() as unary:
            for _ in range(3):
                await unary.enter_async_context(limits.admit("t", "k1", UNARY))
            with pytest.raises(RateLimited, match="3 calls in flight"):
                await call(limits)
    async with limits.admit("t", "k1", STREAM):  # the streams' places are back
        pass


@aio
async def test_opening_a_stream_takes_a_token() -> None:
    limits, _ = quotas(Quota(requests_per_second=1, burst=2, max_in_flight=5, max_streams=5))
    async with limits.admit("t", "k1", STREAM), limits.admit("t", "k1", STREAM):
        with pytest.raises(RateLimited, match="rate limit"):
            await call(limits)


@aio
async def test_idle_keys_are_forgotten_as_the_table_grows_and_busy_ones_kept() -> None:
    limits, clock = quotas(ROOMY)
    async with limits.admit("t", "busy", UNARY):
        for i in range(3000):
            await call(limits, f"k{i}")
        clock.now += 10  # every idle bucket is full again
        await call(limits, "newcomer")
        for i in range(3000, 4100):
            await call(limits, f"k{i}")
        assert len(limits._keys) < 3000
        assert "busy" in limits._keys


# --- waiting for room ---------------------------------------------------------------


@aio
async def test_a_caller_a_little_too_fast_waits_for_its_token_and_is_slowed_to_the_rate() -> None:
    limits, clock = quotas()
    for _ in range(QUOTA.burst):
        await call(limits, time_left=None)
    assert clock.slept == []
    started = clock.now
    for _ in range(4):
        await call(limits, time_left=None)
    assert clock.slept == [pytest.approx(0.1)] * 4  # one token every 0.1 s
    assert clock.now - started == pytest.approx(0.4)


@aio
async def test_concurrent_callers_reserve_tokens_in_turn_up_to_the_hold() -> None:
    holds: list[float] = []
    never = asyncio.Event()

    async def record(seconds: float) -> None:
        holds.append(seconds)
        await never.wait()

    roomy = replace(QUOTA, max_in_flight=100)
    limits = MemoryCallQuotas(QuotaPolicy(roomy), Clock(), record, share=lambda: 0.0)
    for _ in range(roomy.burst):
        await call(limits)
    callers = [asyncio.create_task(call(limits, time_left=None)) for _ in range(22)]
    await asyncio.sleep(0)
    # Twenty reserve the next twenty tokens (0.1 s apart, up to MAX_WAIT_SECONDS) and
    # count as in flight; the last two are held (here for half of it), then checked again.
    reserved = [0.1 * n for n in range(1, 21)]
    assert holds == pytest.approx([*reserved, MAX_WAIT_SECONDS / 2, MAX_WAIT_SECONDS / 2])
    assert limits.in_use("k1") == (20, 0)
    for task in callers:
        task.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    assert limits.in_use("k1") == (0, 0)


@aio
async def test_a_cancelled_wait_gives_its_reserved_token_back() -> None:
    never = asyncio.Event()

    async def stuck(seconds: float) -> None:
        await never.wait()

    clock = Clock()
    limits = MemoryCallQuotas(QuotaPolicy(QUOTA), clock, stuck)
    for _ in range(QUOTA.burst - 1):
        await call(limits)
    await call(limits)  # the last token
    waiting = asyncio.create_task(call(limits, time_left=None))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    clock.now += 0.1  # one token: had the cancelled call kept its reservation, none
    await call(limits)


@aio
async def test_a_call_cancelled_while_waiting_for_its_token_gives_its_place_back() -> None:
    never = asyncio.Event()

    async def stuck(seconds: float) -> None:
        await never.wait()

    limits = MemoryCallQuotas(QuotaPolicy(QUOTA), Clock(), stuck)
    for _ in range(QUOTA.burst):
        await call(limits)
    waiting = asyncio.create_task(call(limits, time_left=None))
    await asyncio.sleep(0)
    assert limits.in_use("k1") == (1, 0)  # counted in while it waits for its token
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert limits.in_use("k1") == (0, 0)


@aio
async def test_a_held_call_with_no_room_by_then_is_refused_with_the_delay_left() -> None:
    limits, clock = quotas(SLOW)
    await call(limits)
    error = await refused(limits, time_left=None)
    assert clock.slept == [MAX_WAIT_SECONDS]
    assert error.retry_after == pytest.approx(10 - MAX_WAIT_SECONDS)


@aio
async def test_a_wait_or_hold_never_takes_more_than_half_the_time_the_caller_has_left() -> None:
    limits, clock = quotas(SLOW)
    await call(limits)
    await refused(limits, time_left=0.2)
    await refused(limits, time_left=0.0)  # no time left: refused at once
    await refused(limits, time_left=-1.0)
    assert clock.slept == [0.1]
    limits, clock = quotas(QUOTA)
    for _ in range(QUOTA.burst):
        await call(limits)
    await refused(limits, time_left=0.1)  # its token is 0.1 s away: more than half of 0.1
    assert clock.slept == [0.05]
    await call(limits, time_left=0.2)  # 0.05 s away now
    assert clock.slept == [0.05, pytest.approx(0.05)]


@aio
async def test_a_held_call_takes_a_place_freed_during_its_hold() -> None:
    release = asyncio.Event()
    holds: list[float] = []

    async def hold_until_released(seconds: float) -> None:
        holds.append(seconds)
        await release.wait()

    policy = QuotaPolicy(ONE_AT_A_TIME)
    limits = MemoryCallQuotas(policy, Clock(), hold_until_released, share=lambda: 0.5)
    async with limits.admit("t", "k1", UNARY):
        held = asyncio.create_task(call(limits, time_left=None))
        await asyncio.sleep(0)
        assert holds == [MAX_WAIT_SECONDS * 0.75] and not held.done()  # held, not refused
    release.set()
    await held  # admitted: the place was freed during the hold
    assert limits.in_use("k1") == (0, 0)


@aio
async def test_no_more_than_max_held_calls_are_held_at_once() -> None:
    release = asyncio.Event()

    async def hold_until_released(seconds: float) -> None:
        await release.wait()

    policy = QuotaPolicy(ONE_AT_A_TIME)
    limits = MemoryCallQuotas(policy, Clock(), hold_until_released, max_held=2)
    async with limits.admit("t", "k1", UNARY):
        held = [asyncio.create_task(call(limits, time_left=None)) for _ in range(2)]
        await asyncio.sleep(0)
        assert not any(task.done() for task in held)
        await refused(limits, time_left=None)  # the third is refused at once
        release.set()
        for task in held:
            with pytest.raises(RateLimited):
                await task  # still no place after the hold
        # A held call that is cancelled leaves the hold: two can be held again.
        release.clear()
        again = [asyncio.create_task(call(limits, time_left=None)) for _ in range(2)]
        await asyncio.sleep(0)
        again[0].cancel()
        await asyncio.gather(again[0], return_exceptions=True)
        third = asyncio.create_task(call(limits, time_left=None))
        await asyncio.sleep(0)
        assert not third.done()
        for task in (again[1], third):
            task.cancel()
        await asyncio.gather(again[1], third, return_exceptions=True)
    await call(limits)


# --- the [limits] table --------------------------------------------------------------

NETWORK = """
[[networks]]
name = "polygon"
chain_id = 137
rpc_urls = ["http://127.0.0.1:8545"]
[[networks.tokens]]
symbol = "POL"
decimals = 18
native = true
price = { peg = "1" }
"""


def limits_from(toml: str) -> LimitsSettings:
    return parse_settings(tomllib.loads(toml + NETWORK), Path(".")).limits


def test_without_a_limits_table_the_defaults_apply() -> None:
    assert limits_from("") == LimitsSettings()
    assert limits_from("").policy.quota_of("anyone") == LimitsSettings().policy.default


def test_a_tenant_table_overrides_only_the_keys_it_gives() -> None:
    limits = limits_from(
        "[limits]\nrequests_per_second = 50\nburst = 100\nmax_in_flight = 32\nmax_streams = 16\n"
        "[limits.tenants.acme]\nrequests_per_second = 500\n"
        "[limits.tenants.tiny]\nmax_streams = 1\nburst = 2\n"
    )
    policy = limits.policy
    assert policy.default == Quota(
        requests_per_second=50, burst=100, max_in_flight=32, max_streams=16
    )
    assert policy.quota_of("acme") == Quota(
        requests_per_second=500, burst=100, max_in_flight=32, max_streams=16
    )
    assert policy.quota_of("tiny") == Quota(
        requests_per_second=50, burst=2, max_in_flight=32, max_streams=1
    )
    assert policy.quota_of("nobody") == policy.default
    assert limits.tenants["tiny"] == TenantLimitsSettings(burst=2, max_streams=1)


def test_a_fractional_rate_is_allowed() -> None:
    assert limits_from("[limits]\nrequests_per_second = 0.5\n").requests_per_second == 0.5


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[limits]\nrequests_per_second = 0\n", "limits.requests_per_second"),
        ("[limits]\nrequests_per_second = -1\n", "limits.requests_per_second"),
        ("[limits]\nrequests_per_second = inf\n", "limits.requests_per_second"),
        ("[limits]\nrequests_per_second = nan\n", "limits.requests_per_second"),
        ('[limits]\nrequests_per_second = "50"\n', "limits.requests_per_second"),
        ("[limits]\nrequests_per_second = true\n", "limits.requests_per_second"),
        ("[limits]\nburst = 0\n", "limits.burst"),
        ("[limits]\nburst = 1.5\n", "limits.burst"),
        ("[limits]\nmax_in_flight = -3\n", "limits.max_in_flight"),
        ("[limits]\nmax_streams = 10000000\n", "limits.max_streams"),
        ("[limits]\nmax_stream = 3\n", "limits.max_stream"),
        ("[limits]\ntenants = 3\n", "limits.tenants"),
        ("[limits.tenants]\nacme = 3\n", "limits.tenants.acme"),
        ("[limits.tenants.acme]\nburst = 0\n", "limits.tenants.acme.burst"),
        ("[limits.tenants.acme]\nburst = true\n", "limits.tenants.acme.burst"),
        (
            "[limits.tenants.acme]\nrequests_per_second = 0\n",
            "limits.tenants.acme.requests_per_second",
        ),
        ("[limits.tenants.acme]\nrate = 3\n", "limits.tenants.acme.rate"),
        ("[limits.tenants.ACME]\nburst = 3\n", "limits.tenants.ACME"),
        ('[limits.tenants."a\\nb"]\nburst = 3\n', "limits.tenants.<name>"),
    ],
)
def test_a_bad_limit_names_its_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        limits_from(toml)
    assert raised.value.key == key
    assert "\n" not in str(raised.value)


def test_rendered_limits_load_back_equal() -> None:
    settings = replace(
        parse_settings(tomllib.loads(NETWORK), Path(".")),
        limits=LimitsSettings(
            requests_per_second=2.5,
            burst=3,
            max_streams=4,
            tenants={"acme": TenantLimitsSettings(max_streams=1), "b-2": TenantLimitsSettings()},
        ),
    )
    text = render_settings(settings)
    assert "[limits.tenants.acme]\nmax_streams = 1\n" in text
    assert parse_settings(tomllib.loads(text), Path(".")).limits == settings.limits


# --- the refusal on the wire ---------------------------------------------------------


def test_the_retry_info_trailer_renders_as_grpc_gateway_does_and_sets_retry_after() -> None:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    key, value = retry_info_trailer(code, "slow down", 1.5)
    assert key == "grpc-status-details-bin"
    status = status_pb2.Status.FromString(value)
    assert (status.code, status.message) == (code.value[0], "slow down")
    details = details_from_trailers([("x-request-id", "r1"), (key, value)])
    assert details == [{"@type": RETRY_INFO, "retryDelay": "1.500s"}]
    response = error_response(code, "slow down", details=details)
    assert response.status == 429
    assert response.headers["Retry-After"] == "2"
    assert json.loads(response.text)["details"] == details


@pytest.mark.parametrize(
    ("delay", "header"),
    [("0.001s", "1"), ("2s", "2"), ("2.000000001s", "3"), ("0s", "0"), ("-1s", "0")],
)
def test_retry_after_is_the_delay_in_whole_seconds_rounded_up(delay: str, header: str) -> None:
    details = [{"@type": RETRY_INFO, "retryDelay": delay}]
    response = error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", details=details)
    assert response.headers["Retry-After"] == header


@pytest.mark.parametrize(
    "details",
    [
        [],
        [{"@type": RETRY_INFO, "retryDelay": "soon"}],
        [{"@type": RETRY_INFO, "retryDelay": "infs"}],
        [{"@type": RETRY_INFO, "retryDelay": 3}],
        [{"@type": "type.googleapis.com/google.rpc.DebugInfo", "retryDelay": "1s"}],
    ],
)
def test_no_retry_after_without_a_well_formed_retry_info(details: list[dict[str, Any]]) -> None:
    response = error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", details=details)
    assert response.status == 429
    assert "Retry-After" not in response.headers
