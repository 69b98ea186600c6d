"""Rate limits and concurrency quotas per API key, on a real server over gRPC and REST.

The stack's own tenant ("default") gets a tiny quota: a burst of 3 calls and
one more every 10 s, so nothing refills while a test runs.  Tenant "roomy"
has its own, larger quota; each test makes the keys it needs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2
from service.devchain.world import DemoWorld
from service.quotas import BUSY_RETRY_SECONDS, MemoryCallQuotas
from service.settings.model import LimitsSettings, TenantLimitsSettings
from tests.support.stack import Stack, keyed_channel, running_stack
from tests.support.tenancy_kit import (
    Stubs,
    captured_logs,
    key_id,
    new_key,
    no_key_material_logged,
    served_gateway,
)
from tests.support.watching import Watch, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
BURST = 3
RATE = 0.1  # one token every 10 s: none comes back during a test
LIMITS = LimitsSettings(
    requests_per_second=RATE,
    burst=BURST,
    max_in_flight=2,
    max_streams=2,
    tenants={
        "roomy": TenantLimitsSettings(burst=50),
        "steady": TenantLimitsSettings(requests_per_second=4, burst=1),
    },
)
WALLET = "wal_alice_polygon"
CUSTOMER = "cus_roomy"
ALICE_POLYGON = "0xd3e0000000000000000000000000000000000001"  # held by the demo world
BOB_POLYGON = "0xD3E0000000000000000000000000000000000003"
RETRY_INFO_JSON_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
# The deadline of a call expected to be refused: a call over a limit waits for room
# at most half its time left, so its refusal comes in a quarter second.
SHORT = 0.5
SHORT_HEADER = {"Grpc-Timeout": "500m"}


@pytest.fixture(autouse=True)
def no_api_key_in_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    with no_key_material_logged(request):
        yield


@pytest_asyncio.fixture(loop_scope="session")
async def limited(world: DemoWorld, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(world, tmp_path, limits=LIMITS) as stack:
        yield stack


async def import_wallet(api: Stubs, address: str) -> str:
    imported = await api.wallets.ImportWallet(
        wallets_pb2.ImportWalletRequest(customer_id=CUSTOMER, network="polygon", address=address)
    )
    return str(imported.wallet.wallet_id)


def list_wallets(api: Stubs, **kwargs: Any) -> Any:
    request = wallets_pb2.ListWalletsRequest(customer_id=CUSTOMER)
    return api.wallets.ListWallets(request, **kwargs)


def in_use(stack: Stack, api_key: str) -> tuple[int, int]:
    """(unary calls in flight, streams open) the server counts for a key."""
    quotas = stack.service.quotas
    assert isinstance(quotas, MemoryCallQuotas)
    return quotas.in_use(key_id(api_key))


def hold_upstream(stack: Stack, seconds: float) -> None:
    """Hold every upstream JSON-RPC request ``seconds`` (0: pass them at once)."""
    for proxy in stack.proxies.values():
        proxy.delay = seconds


def balance(stack_or_stubs: Stack | Stubs, wallet_id: str = WALLET, **kwargs: Any) -> Any:
    stub = stack_or_stubs.stub if isinstance(stack_or_stubs, Stack) else stack_or_stubs.balances
    return stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=wallet_id), **kwargs)


def retry_info_of(error: aio.AioRpcError) -> tuple[status_pb2.Status, duration_pb2.Duration]:
    """The google.rpc.Status in the trailer, checked against the call's status, and its delay."""
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    reason, detail = status.details  # an ErrorInfo, then the RetryInfo
    error_info = error_details_pb2.ErrorInfo()
    assert reason.Unpack(error_info), reason.type_url
    assert (error_info.reason, error_info.domain) == ("RATE_LIMITED", "balances.v1")
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info), detail.type_url
    return status, info.retry_delay


async def refused(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == RESOURCE_EXHAUSTED, raised.value.details()
    return raised.value


async def test_calls_beyond_the_burst_are_refused_with_a_retry_delay_in_the_trailer(
    limited: Stack,
) -> None:
    for _ in range(BURST):
        await balance(limited)
    error = await refused(balance(limited, timeout=SHORT))
    assert "over its rate limit of 0.1 requests per second (burst 3)" in (error.details() or "")
    _, delay = retry_info_of(error)
    assert 9 < delay.ToTimedelta().total_seconds() <= 10  # one token at 0.1/s
    assert "x-request-id" in dict(error.trailing_metadata() or ())
    # Every call after that is refused too, each with its own (shrinking) delay.
    again = await refused(balance(limited, timeout=SHORT))
    assert retry_info_of(again)[1].ToTimedelta() <= delay.ToTimedelta()


async def test_a_call_just_over_the_rate_waits_for_its_token_instead_of_failing(
    limited: Stack,
) -> None:
    key = await new_key(limited, "steady")  # 4 calls a second, one at a time
    async with keyed_channel(limited.target, key) as channel:
        api = Stubs(channel)
        await import_wallet(api, ALICE_POLYGON)
        for _ in range(3):  # back to back: each waits (< MAX_WAIT_SECONDS) for its token
            await list_wallets(api)
        # A caller with too little time left for a wait is refused at once instead.
        error = await refused(list_wallets(api, timeout=0.05))
        _, delay = retry_info_of(error)
        assert 0 < delay.ToTimedelta().total_seconds() <= 0.25


async def test_another_key_and_another_tenant_are_unaffected_at_the_same_moment(
    limited: Stack,
) -> None:
    same_tenant_key = await new_key(limited, "default")
    roomy_key = await new_key(limited, "roomy")
    for _ in range(BURST):
        await balance(limited)
    await refused(balance(limited, timeout=SHORT))
    async with (
        keyed_channel(limited.target, same_tenant_key) as same_tenant,
        keyed_channel(limited.target, roomy_key) as roomy,
    ):
        for _ in range(BURST):  # the same tenant's other key has its own bucket
            await balance(Stubs(same_tenant))
        await refused(balance(Stubs(same_tenant), timeout=SHORT))
        roomy_api = Stubs(roomy)
        wallet = await import_wallet(roomy_api, ALICE_POLYGON)
        for _ in range(BURST * 5):  # its tenant's burst of 50 is its own
            await balance(roomy_api, wallet)
    await refused(balance(limited, timeout=SHORT))  # and the first key is still over its limit


async def test_rest_answers_429_with_retry_after_and_the_retry_info_in_details(
    limited: Stack,
) -> None:
    async with served_gateway(limited, limited.api_key) as rest:
        for _ in range(BURST):
            status, _, _ = await rest.request("GET", f"/v1/wallets/{WALLET}/balance")
            assert status == 200
        status, body, headers = await rest.request(
            "GET", f"/v1/wallets/{WALLET}/balance", headers=SHORT_HEADER
        )
        assert status == 429
        assert body["code"] == RESOURCE_EXHAUSTED.value[0]
        assert "over its rate limit" in body["message"]
        reason, detail = body["details"]
        assert reason["reason"] == "RATE_LIMITED" and reason["metadata"] == {"quota": "rate"}
        assert detail["@type"] == RETRY_INFO_JSON_TYPE
        delay = detail["retryDelay"]
        assert delay.endswith("s")
        assert 9 < float(delay[:-1]) <= 10
        assert headers["Retry-After"] == str(math.ceil(float(delay[:-1])))
        assert headers["X-Request-Id"]
        # A watch refused before its first message: 429, and (as grpc-gateway streams it)
        # one {"error": ...} line carrying the same details.
        status, body, headers = await rest.request(
            "GET", f"/v1/wallets/{WALLET}/balance:watch", headers=SHORT_HEADER
        )
        assert status == 429
        assert set(body) == {"error"}
        _, detail = body["error"]["details"]
        assert detail["@type"] == RETRY_INFO_JSON_TYPE
        assert headers["Retry-After"] == str(math.ceil(float(detail["retryDelay"][:-1])))


async def test_open_watch_streams_are_capped_apart_from_unary_calls(limited: Stack) -> None:
    key = await new_key(limited, "roomy")  # a burst of 50: only the stream quota (2) binds
    async with keyed_channel(limited.target, key) as channel:
        api = Stubs(channel)
        await import_wallet(api, ALICE_POLYGON)

        def watch() -> Watch:
            request = pb.WatchCustomerBalancesRequest(customer_id=CUSTOMER)
            return Watch.start(api.balances.WatchCustomerBalances(request))

        held = [watch(), watch()]
        for stream in held:
            assert (await stream.next()).initial
        third = watch()
        await asyncio.wait_for(third.ended.wait(), 5)
        assert third.error is not None and third.error.code() == RESOURCE_EXHAUSTED
        assert "2 watch streams open" in (third.error.details() or "")
        _, delay = retry_info_of(third.error)
        assert delay.ToTimedelta().total_seconds() == BUSY_RETRY_SECONDS
        # The open streams take no unary place: two unary calls still run at once.
        await asyncio.gather(*(list_wallets(api) for _ in range(2)))
        held[0].call.cancel()
        await until(lambda: in_use(limited, key) == (0, 1))  # the server saw it end
        fourth = watch()
        assert (await fourth.next()).initial
        for stream in (held[1], fourth):
            stream.call.cancel()


async def test_unary_calls_in_flight_are_capped_and_given_back_however_they_end(
    limited: Stack,
) -> None:
    key = await new_key(limited, "roomy")
    async with keyed_channel(limited.target, key) as channel:
        api = Stubs(channel)
        wallet = await import_wallet(api, ALICE_POLYGON)
        other_wallet = await import_wallet(api, BOB_POLYGON)
        hold_upstream(limited, 2.0)  # cold reads hang: calls stay in flight
        slow = [asyncio.ensure_future(balance(api, wallet)) for _ in range(2)]
        await until(lambda: in_use(limited, key) == (2, 0))
        error = await refused(list_wallets(api, timeout=SHORT))
        assert "2 calls in flight" in (error.details() or "")
        _, delay = retry_info_of(error)
        assert delay.ToTimedelta().total_seconds() == BUSY_RETRY_SECONDS
        await asyncio.gather(*slow)
        assert in_use(limited, key) == (0, 0)
        # Failed calls give their places back: NOT_FOUND after NOT_FOUND, never refused.
        for _ in range(5):
            with pytest.raises(aio.AioRpcError) as raised:
                await balance(api, "wal_nobody")
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        # So do calls their clients gave up on (cancelled on the server at the deadline).
        hold_upstream(limited, 5.0)
        for _ in range(3):
            with pytest.raises(aio.AioRpcError) as raised:
                await balance(api, other_wallet, timeout=0.3)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: in_use(limited, key) == (0, 0))
        hold_upstream(limited, 0.0)
        await list_wallets(api)


async def test_health_and_reflection_stay_open_whatever_the_limits(limited: Stack) -> None:
    for _ in range(BURST):
        await balance(limited)
    await refused(balance(limited, timeout=SHORT))
    health = health_pb2_grpc.HealthStub(limited.channel)
    keyed_health = health_pb2_grpc.HealthStub(limited.keyed)
    for _ in range(BURST * 10):
        for stub in (health, keyed_health):
            answer = await stub.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_refusals_are_not_logged_one_by_one(limited: Stack) -> None:
    for _ in range(BURST):
        await balance(limited)
    with captured_logs() as logs:
        await asyncio.gather(*(refused(balance(limited, timeout=SHORT)) for _ in range(20)))
    assert "rate limit" not in logs.text()
