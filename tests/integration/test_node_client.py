"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, protos loaded at run time) against the real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2

from balances.v1 import balances_pb2 as pb
from tests.support.expected import expected_balances
from tests.support.processes import run_tool
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLIENT = PROJECT_ROOT / "tests" / "support" / "node" / "balances_client.js"
NODE_MODULES = PROJECT_ROOT / "node_modules"
# google/api/annotations.proto ships beside google/api/annotations_pb2.py.
GOOGLEAPIS_PROTOS = Path(annotations_pb2.__file__).parents[2]


async def node_client(
    target: str, api_key: str, wallet_id: str, customer_id: str, *, timeout: float = 60
) -> tuple[int, dict[str, Any], str]:
    """Run the client without blocking the event loop the server runs on."""
    node = shutil.which("node")
    assert node is not None, "node not found on PATH"
    for package in ("@grpc/grpc-js", "@grpc/proto-loader"):
        assert (NODE_MODULES / package).is_dir(), f"{package} missing: run npm install"
    assert (GOOGLEAPIS_PROTOS / "google" / "api" / "annotations.proto").is_file()
    code, out, err = await run_tool(
        node,
        str(CLIENT),
        target,
        api_key,
        wallet_id,
        customer_id,
        "--include",
        str(GOOGLEAPIS_PROTOS),
        cwd=PROJECT_ROOT,
        timeout=timeout,
    )
    lines = out.splitlines()
    assert len(lines) == 1, (out, err)
    return code, json.loads(lines[0]), err


async def test_node_client_reads_wallet_and_customer_balances(stack: Stack) -> None:
    code, body, err = await node_client(
        stack.target, stack.api_key, "wal_alice_polygon", "cus_alice"
    )
    assert code == 0, err
    wallet, customer = body["wallet"], body["customer"]

    assert wallet["walletId"] == "wal_alice_polygon"
    assert wallet["network"] == "polygon"
    assert wallet["balances"] == expected_balances(stack.world, "wal_alice_polygon")
    assert wallet["balances"][0] == {"currency": "USDC", "amount": "1250.50", "decimals": 6}
    # The same snapshot a Python client gets (the cache holds it): same block, same time.
    same = await stack.stub.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    )
    assert wallet["blockNumber"] == str(same.block_number)  # longs: String, exact
    assert int(same.block_number) > 0
    assert wallet["lastUpdated"] == {
        "seconds": str(same.last_updated.seconds),
        "nanos": same.last_updated.nanos,
    }

    assert customer["customerId"] == "cus_alice"
    assert customer["totalBalance"] == {"amount": "4106.99", "currency": "USD"}
    assert [w["walletId"] for w in customer["wallets"]] == [
        "wal_alice_ethereum",
        "wal_alice_polygon",
    ]
    for entry in customer["wallets"]:
        demo = next(w for w in stack.world.wallets if w.wallet_id == entry["walletId"])
        assert entry["network"] == demo.network
        assert entry["address"] == demo.address
        assert entry["balances"] == expected_balances(stack.world, entry["walletId"])
        assert int(entry["blockNumber"]) > 0
    ethereum = customer["wallets"][0]["balances"]
    assert {b["currency"]: b["amount"] for b in ethereum} == {
        "USDC": "1250.25",
        "USDT": "99.99",
        "ETH": "0.50",
    }


async def test_node_client_sees_not_found_for_an_unknown_wallet(stack: Stack) -> None:
    code, body, err = await node_client(stack.target, stack.api_key, "wal_nobody", "cus_alice")
    assert code == 1, err
    assert body == {
        "error": {
            "method": "GetWalletBalance",
            "code": 5,
            "codeName": "NOT_FOUND",
            "details": "wallet wal_nobody not found",
        }
    }
    assert "NOT_FOUND" in err


async def test_node_client_sees_not_found_for_an_unknown_customer(stack: Stack) -> None:
    code, body, _err = await node_client(
        stack.target, stack.api_key, "wal_alice_polygon", "cus_nobody"
    )
    assert code == 1
    assert body["error"]["method"] == "GetCustomerBalances"
    assert body["error"]["codeName"] == "NOT_FOUND"
