"""JSON log lines from a real ``balances serve``: one access line per request, gRPC or REST,
with its request ID, tenant, method, status and duration, and no secret in any field."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.devchain.world import DemoWorld
from service.domain import DEFAULT_TENANT
from service.settings import RestSettings
from service.settings.model import LoggingSettings
from tests.support.cli import SECRET
from tests.support.rpc_proxy import CountingProxy
from tests.support.serving import kill_9, start_serving
from tests.support.stack import keyed_channel, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WALLET = "wal_bob_polygon"
REST_LINE = re.compile(r"serving REST on port (\d+)")
BAD_KEY = "bk_SECRET-BAD-KEY-CANARY"
QUERY_CANARY = "SECRET-QUERY-CANARY"
ACCESS = "balances.access"


async def test_json_lines_name_each_request_and_hold_no_secret(
    world: DemoWorld, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(CountingProxy(world.networks["polygon"].rpc_url))
        assert SECRET in proxy.url  # the provider's key: must never be logged
        others = {name: [n.rpc_url] for name, n in world.networks.items() if name != "polygon"}
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [proxy.url], **others},
            rest=RestSettings(listen="127.0.0.1:0"),
            logging=LoggingSettings(format="json", access_log=True),
        )
        served = await start_serving(config.path)
        stack.push_async_callback(kill_9, served)
        [rest_port] = [int(m[1]) for line in served.lines if (m := REST_LINE.search(line))]
        good = await stack.enter_async_context(
            keyed_channel(f"127.0.0.1:{served.port}", config.api_key)
        )
        bad = await stack.enter_async_context(keyed_channel(f"127.0.0.1:{served.port}", BAD_KEY))
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def grpc_call(channel: aio.Channel, wallet: str, request_id: str) -> grpc.StatusCode:
            stub = balances_pb2_grpc.BalancesServiceStub(channel)
            try:
                await stub.GetWalletBalance(
                    pb.GetWalletBalanceRequest(wallet_id=wallet),
                    metadata=(("x-request-id", request_id),),
                    timeout=10,
                )
            except aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        async def rest_get(path: str, key: str, request_id: str) -> int:
            headers = {"X-API-Key": key, "X-Request-Id": request_id}
            async with http.get(f"http://127.0.0.1:{rest_port}{path}", headers=headers) as r:
                await r.read()
                assert r.headers["X-Request-Id"] == request_id
                return r.status

        assert await grpc_call(good, WALLET, "grpc-ok") == grpc.StatusCode.OK
        assert await grpc_call(good, "wal_nobody", "grpc-missing") == grpc.StatusCode.NOT_FOUND
        assert await grpc_call(bad, WALLET, "grpc-badkey") == grpc.StatusCode.UNAUTHENTICATED
        balance = f"/v1/wallets/{WALLET}/balance"
        assert await rest_get(balance, config.api_key, "rest-ok") == 200
        assert (
            await rest_get("/v1/wallets/wal_nobody/balance", config.api_key, "rest-missing") == 404
        )
        assert await rest_get(balance, BAD_KEY, "rest-badkey") == 401
        query = f"{balance}?api_key={QUERY_CANARY}"
        assert await rest_get(query, config.api_key, "rest-query") == 200  # unknown: ignored
        await asyncio.sleep(0.3)  # the last lines reach the pipe
        lines = list(served.lines)

    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    text = "\n".join(lines)
    for canary in (SECRET, config.api_key, BAD_KEY, QUERY_CANARY):
        assert canary not in text, canary
    access = [r for r in records if r["logger"] == ACCESS]
    expected: dict[str, dict[str, Any]] = {
        "grpc-ok": {"status": "OK", "tenant": DEFAULT_TENANT, "via": "grpc"},
        "grpc-missing": {"status": "NOT_FOUND", "tenant": DEFAULT_TENANT, "via": "grpc"},
        "grpc-badkey": {"status": "UNAUTHENTICATED", "tenant": None, "via": "grpc"},
        "rest-ok": {"status": "OK", "tenant": DEFAULT_TENANT, "http_status": 200},
        "rest-missing": {"status": "NOT_FOUND", "tenant": DEFAULT_TENANT, "http_status": 404},
        "rest-badkey": {"status": "UNAUTHENTICATED", "tenant": None, "http_status": 401},
        "rest-query": {"status": "OK", "tenant": DEFAULT_TENANT, "http_status": 200},
    }
    for request_id, fields in expected.items():
        # One line per request: a REST call runs the gRPC interceptors in process, silently.
        [line] = [r for r in access if r["request_id"] == request_id]
        for name, value in fields.items():
            assert line[name] == value, (request_id, name, line)
        assert line["method"] == "/balances.v1.BalancesService/GetWalletBalance", line
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        if request_id.startswith("rest"):
            assert line["via"] == "rest" and line["http_method"] == "GET"
            assert line["route"] == "/v1/wallets/{wallet_id}/balance", line
    # A line logged inside a request (the error interceptor's) carries the request too.
    inside = [r for r in records if r["logger"] != ACCESS and r.get("request_id") == "grpc-missing"]
    assert inside and all(r["tenant"] == DEFAULT_TENANT for r in inside), records
