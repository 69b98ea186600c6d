"""GetWalletBalance / GetCustomerBalances over a real socket against real chains."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import grpc
import pytest

from balances.v1 import balances_pb2 as pb
from tests.support.expected import (
    DOCUMENTED_CUSTOMER,
    DOCUMENTED_WALLET,
    as_json,
    assert_documented_shape,
    expected_balances,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_wallet_balance_matches_documented_shape_and_chain(stack: Stack) -> None:
    response = await stack.stub.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    )
    body = as_json(response)
    assert_documented_shape(body, DOCUMENTED_WALLET)
    assert set(body) == {"walletId", "network", "balances", "lastUpdated", "blockNumber"}
    assert body["walletId"] == "wal_alice_polygon"
    assert body["network"] == "polygon"
    assert body["balances"] == expected_balances(stack.world, "wal_alice_polygon")
    assert body["balances"][0] == {"currency": "USDC", "amount": "1250.50", "decimals": 6}
    assert body["lastUpdated"].endswith("Z")
    assert int(body["blockNumber"]) > 0


async def test_wallet_balance_read_at_one_block_whose_time_is_reported(stack: Stack) -> None:
    response = await stack.stub.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon")
    )
    node = stack.world.networks["polygon"].rpc_url
    from service.devchain.rpc import rpc_call

    block = await rpc_call(node, "eth_getBlockByNumber", [hex(response.block_number), False])
    assert int(block["timestamp"], 16) == response.last_updated.seconds


async def test_customer_balances_match_documented_shape_and_exact_total(stack: Stack) -> None:
    response = await stack.stub.GetCustomerBalances(
        pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    )
    body = as_json(response)
    assert_documented_shape(body, DOCUMENTED_CUSTOMER)
    assert set(body) == {"customerId", "totalBalance", "wallets"}
    for wallet in body["wallets"]:
        assert set(wallet) == {
            "walletId",
            "network",
            "address",
            "balances",
            "lastUpdated",
            "blockNumber",
        }
        assert wallet["balances"] == expected_balances(stack.world, wallet["walletId"])
    assert [w["walletId"] for w in body["wallets"]] == ["wal_alice_ethereum", "wal_alice_polygon"]
    # ethereum: 1250.25 USDC + 99.99 USDT + 0.5 ETH x $3000; polygon: 1250.50 USDC + 12.5 POL x $0.50
    expected = (
        Fraction("1250.25")
        + Fraction("99.99")
        + Fraction("0.5") * 3000
        + Fraction("1250.50")
        + Fraction("12.5") * Fraction("0.5")
    )
    assert body["totalBalance"] == {"amount": "4106.99", "currency": "USD"}
    assert Fraction(body["totalBalance"]["amount"]) == expected


async def test_cold_customer_query_is_one_eth_call_per_network_and_warm_is_zero(
    stack: Stack,
) -> None:
    request = pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    await stack.stub.GetCustomerBalances(request)
    assert stack.eth_calls() == {"polygon": 1, "ethereum": 1}
    stack.reset_counts()
    await stack.stub.GetCustomerBalances(request)
    assert stack.eth_calls() == {"polygon": 0, "ethereum": 0}
    assert sum(sum(p.counts.values()) for p in stack.proxies.values()) == 0


async def test_200_concurrent_cold_wallet_calls_make_one_eth_call(stack: Stack) -> None:
    request = pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon")
    responses = await asyncio.gather(*(stack.stub.GetWalletBalance(request) for _ in range(200)))
    assert len({r.SerializeToString() for r in responses}) == 1
    assert stack.eth_calls() == {"polygon": 1, "ethereum": 0}


@pytest.mark.parametrize(
    "wallet_id",
    ["", "wal_", "abc", "wal_a-b", "wal_" + "a" * 65, "WAL_abc", "wal_abc\n", "cus_abc", "wal_é"],
)
async def test_malformed_wallet_id_is_invalid_argument_without_lookup(
    stack: Stack, wallet_id: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=wallet_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "wallet_id" in (caught.value.details() or "")
    assert sum(sum(p.counts.values()) for p in stack.proxies.values()) == 0


@pytest.mark.parametrize("customer_id", ["", "cus_", "wal_alice", "cus alice", "cus_" + "x" * 65])
async def test_malformed_customer_id_is_invalid_argument(stack: Stack, customer_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GetCustomerBalances(pb.GetCustomerBalancesRequest(customer_id=customer_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_ids_are_not_found(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as wallet:
        await stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_nobody"))
    assert wallet.value.code() == grpc.StatusCode.NOT_FOUND
    assert wallet.value.details() == "wallet wal_nobody not found"
    with pytest.raises(grpc.aio.AioRpcError) as customer:
        await stack.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_nobody")
        )
    assert customer.value.code() == grpc.StatusCode.NOT_FOUND
    assert customer.value.details() == "customer cus_nobody not found"
    assert sum(sum(p.counts.values()) for p in stack.proxies.values()) == 0


async def test_errors_carry_a_request_id_in_trailers(stack: Stack) -> None:
    call = stack.stub.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_nobody"),
        metadata=(("x-request-id", "req-123"),),
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert ("x-request-id", "req-123") in tuple(await call.trailing_metadata())
