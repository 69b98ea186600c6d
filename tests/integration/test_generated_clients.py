"""Generated clients (buf.gen.yaml) in TypeScript and Go against the real server.

Each client is generated from protos/ with local plugins, compiled (tsc, go
build) and run as a separate program: GetWalletBalance and GetCustomerBalances
must give the exact amounts a Python client gets, and GetWalletBalance of an
unknown wallet must give NOT_FOUND with the google.rpc details the server sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2, status_pb2

from balances.v1 import balances_pb2 as pb
from tests.support.clients import build
from tests.support.expected import expected_balances
from tests.support.processes import run_tool
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration]

CLIENT_BUILDERS: dict[str, Callable[[Path], list[str]]] = {
    "typescript": build.build_ts_client,
    "go": build.build_go_client,
}


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """buf generate, once per session, into a temporary directory."""
    out = tmp_path_factory.mktemp("generated-clients")
    build.generate(out)
    return out


@pytest.fixture(scope="session", params=sorted(CLIENT_BUILDERS))
def client_command(request: pytest.FixtureRequest, generated: Path) -> list[str]:
    return CLIENT_BUILDERS[request.param](generated)


def status_details(error: grpc.aio.AioRpcError) -> list[dict[str, Any]]:
    """The google.rpc.Status details of ``error``, as proto3 JSON ``Any`` objects."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            status = status_pb2.Status.FromString(value)
            assert status.code == error.code().value[0]
            return [MessageToDict(detail) for detail in status.details]
    return []


def test_buf_gen_generates_every_client(generated: Path) -> None:
    ts = {p.relative_to(generated / "ts").as_posix() for p in (generated / "ts").rglob("*_pb.ts")}
    assert {
        "balances/v1/balances_pb.ts",
        "balances/v1/wallets_pb.ts",
        "balances/v1/webhooks_pb.ts",
        "google/api/annotations_pb.ts",
        "google/rpc/error_details_pb.ts",
    } <= ts
    go = generated / "go" / "src" / "balancesclient" / "gen" / "balances" / "v1"
    assert {p.name for p in go.glob("*.go")} == {
        f"{name}{suffix}"
        for name in ("balances", "wallets", "webhooks")
        for suffix in (".pb.go", "_grpc.pb.go")
    }


def test_tsc_rejects_a_client_that_misuses_the_generated_types(
    generated: Path, tmp_path: Path
) -> None:
    """The type check is real: a wrong field name in a request does not compile."""
    bad = tmp_path / "misuse.ts"
    bad.write_text(
        'import { create } from "@bufbuild/protobuf";\n'
        'import { GetWalletBalanceRequestSchema } from "./balances/v1/balances_pb.js";\n'
        'export const request = create(GetWalletBalanceRequestSchema, { walletID: "wal_x" });\n'
    )
    project = build.ts_project(generated, bad)
    try:
        done = build.compile_ts(project)
    finally:
        (project / bad.name).unlink()
    assert done.returncode != 0
    assert "misuse.ts" in done.stdout and "walletID" in done.stdout, done.stdout


@pytest.mark.asyncio(loop_scope="session")
async def test_generated_client_reads_balances_and_rich_errors(
    client_command: list[str], stack: Stack
) -> None:
    code, out, err = await run_tool(
        *client_command,
        stack.target,
        stack.api_key,
        "wal_alice_polygon",
        "cus_alice",
        "wal_nobody",
        timeout=30,
    )
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert len(lines) == 1, (out, err)
    body = json.loads(lines[0])

    # Exactly what a Python client reads (the cache holds the snapshot: same block).
    wallet = await stack.stub.GetWalletBalance(
        pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
    )
    assert body["wallet"] == MessageToDict(wallet)
    assert body["wallet"]["balances"] == expected_balances(stack.world, "wal_alice_polygon")
    assert body["wallet"]["balances"][0] == {
        "currency": "USDC",
        "amount": "1250.50",
        "decimals": 6,
    }
    assert body["wallet"]["blockNumber"] == str(wallet.block_number) != "0"

    customer = await stack.stub.GetCustomerBalances(
        pb.GetCustomerBalancesRequest(customer_id="cus_alice")
    )
    assert body["customer"] == MessageToDict(customer)
    assert body["customer"]["totalBalance"] == {"amount": "4106.99", "currency": "USD"}
    ethereum = next(w for w in body["customer"]["wallets"] if w["walletId"] == "wal_alice_ethereum")
    assert {b["currency"]: b["amount"] for b in ethereum["balances"]} == {
        "USDC": "1250.25",
        "USDT": "99.99",
        "ETH": "0.50",
    }

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_nobody"))
    sent = status_details(raised.value)
    missing = body["missing"]
    assert missing["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing["codeName"] == "NotFound"
    assert missing["message"] == raised.value.details()
    error_info_type = f"type.googleapis.com/{error_details_pb2.ErrorInfo.DESCRIPTOR.full_name}"
    infos = [
        {k: v for k, v in detail.items() if k != "@type"}
        for detail in sent
        if detail["@type"] == error_info_type
    ]
    assert missing["errorInfo"] == infos
    assert [(i["reason"], i["domain"]) for i in missing["errorInfo"]] == [
        ("WALLET_NOT_FOUND", "balances.v1")
    ]
    if "details" in missing:  # the TypeScript client decodes every google.rpc detail
        assert missing["details"] == sent
