"""``GET /metrics`` of a real ``balances serve``: the counters move by what was done to it.

One fresh anvil chain (``monitored_world``) read through two providers: a
``FaultProxy`` (provider 1) and a ``CountingProxy`` (provider 2).  The server runs
as its own process with REST and ``[metrics] listen`` on; the test drives a cold
and a warm gRPC read, REST calls, a provider answering HTTP 503, and a webhook
delivered to a real receiver, scraping between the steps and asserting the deltas
and labels.  Canaries: no series or label anywhere holds a URL, the API key, or a
wallet address.

``--workers 2``: the supervisor serves the sum of its workers' multiprocess files.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc, webhooks_pb2_grpc
from balances.v1 import webhooks_pb2 as wpb
from service import children
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import transfer
from service.devchain.world import DemoWorld
from service.settings import RestSettings, WatchSettings, WebhookSettings
from tests.support.cli import BALANCES
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.monitoring import RECEIVER, SENDER, monitored_world
from tests.support.processes import drain, processes_in_group
from tests.support.rpc_proxy import CountingProxy
from tests.support.serving import kill_9, start_serving
from tests.support.stack import keyed_channel, write_stack_config
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

METRICS_LINE = re.compile(r"serving metrics on port (\d+)")
REST_LINE = re.compile(r"serving REST on port (\d+)")
BALANCES_SERVICE = "balances.v1.BalancesService"
WALLET_ROUTE = "/v1/wallets/{wallet_id}/balance"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> tuple[str, Samples]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def label_values(samples: Samples) -> set[str]:
    return {v for (_, labels) in samples for _, v in labels}


async def poll_until(condition: Callable[[], Any], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def port_in(lines: list[str], pattern: re.Pattern[str]) -> int:
    [port] = [int(m.group(1)) for line in lines if (m := pattern.search(line))]
    return port


async def test_metrics_count_grpc_rest_cold_and_warm_reads_provider_faults_and_webhooks(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    world = await monitored_world(start_anvil)
    url = world.networks["polygon"].rpc_url
    usdc = world.networks["polygon"].tokens["USDC"]
    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(WebhookReceiver(status=200))
        first = await stack.enter_async_context(FaultProxy(url))
        second = await stack.enter_async_context(CountingProxy(url))
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [first.url, second.url]},
            network_changes={"polygon": {"confirmations": 0}},
            watch=WatchSettings(poll_interval_seconds=0.1),
            webhooks=WebhookSettings(
                allow_http_hosts=(f"127.0.0.1:{receiver.port}",), retry_schedule_seconds=(0.2,)
            ),
            rest=RestSettings(listen="127.0.0.1:0"),
            metrics_listen="127.0.0.1:0",
        )
        served = await start_serving(config.path)
        stack.push_async_callback(kill_9, served)
        metrics_port = port_in(served.lines, METRICS_LINE)
        rest_port = port_in(served.lines, REST_LINE)
        channel = await stack.enter_async_context(
            keyed_channel(f"127.0.0.1:{served.port}", config.api_key)
        )
        stub = balances_pb2_grpc.BalancesServiceStub(channel)
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def rest_get(path: str) -> int:
            async with http.get(
                f"http://127.0.0.1:{rest_port}{path}", headers={"X-API-Key": config.api_key}
            ) as response:
                await response.read()
                return response.status

        _, before = await scrape(metrics_port)
        [build] = [k for k in before if k[0] == "balances_build_info"]
        assert dict(build[1])["version"] and dict(build[1])["revision"]

        # --- gRPC: a cold read, a warm read of the same wallet, an unknown wallet ------------
        request = pb.GetWalletBalanceRequest(wallet_id=SENDER.wallet_id)
        await stub.GetWalletBalance(request, timeout=10)
        await stub.GetWalletBalance(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetWalletBalance(
                pb.GetWalletBalanceRequest(wallet_id="wal_none"), timeout=10
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        _, after = await scrape(metrics_port)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        get = {"service": BALANCES_SERVICE, "method": "GetWalletBalance"}
        assert moved("balances_grpc_requests_total", **get, code="OK") == 2
        assert moved("balances_grpc_requests_total", **get, code="NOT_FOUND") == 1
        assert moved("balances_grpc_request_seconds_count", **get) == 3
        assert value(after, "balances_grpc_in_flight", **get) == 0
        assert moved("balances_cache_lookups_total", network="polygon", result="miss") == 1
        assert moved("balances_cache_lookups_total", network="polygon", result="hit") == 1
        assert moved("balances_snapshot_reads_total", network="polygon", outcome="ok") == 1
        assert moved("balances_snapshot_addresses_count", network="polygon") == 1
        assert moved("balances_tenant_requests_total", tenant="default") == 3
        ok_1 = {"network": "polygon", "provider": "1", "outcome": "ok"}
        assert total(after, "balances_upstream_requests_total", **ok_1) > total(
            before, "balances_upstream_requests_total", **ok_1
        )
        assert value(after, "balances_network_readable", network="polygon") == 1

        # --- REST: a warm read (counted as REST, not again as gRPC), a 404 -------------------
        before = after
        assert await rest_get(f"/v1/wallets/{SENDER.wallet_id}/balance") == 200
        assert await rest_get("/v1/wallets/wal_none/balance") == 404
        assert await rest_get("/no/such/route") == 404
        _, after = await scrape(metrics_port)
        assert (
            moved("balances_rest_requests_total", route=WALLET_ROUTE, method="GET", status="200")
            == 1
        )
        assert (
            moved("balances_rest_requests_total", route=WALLET_ROUTE, method="GET", status="404")
            == 1
        )
        assert (
            moved("balances_rest_requests_total", route="unmatched", method="GET", status="404")
            == 1
        )
        assert moved("balances_rest_request_seconds_count", route=WALLET_ROUTE, method="GET") == 2
        assert total(after, "balances_grpc_requests_total", **get) == total(
            before, "balances_grpc_requests_total", **get
        )
        assert moved("balances_cache_lookups_total", network="polygon", result="hit") == 1
        assert moved("balances_tenant_requests_total", tenant="default") == 2

        # --- provider 1 answers HTTP 503: provider 2 answers the cold read -------------------
        before = after
        await first.set_fault(Fault.HTTP_503)
        await stub.GetWalletBalance(
            pb.GetWalletBalanceRequest(wallet_id=RECEIVER.wallet_id), timeout=10
        )
        _, after = await scrape(metrics_port)
        assert total(
            after, "balances_upstream_requests_total", provider="1", outcome="fault"
        ) > total(before, "balances_upstream_requests_total", provider="1", outcome="fault")
        assert total(after, "balances_upstream_requests_total", provider="2", outcome="ok") > total(
            before, "balances_upstream_requests_total", provider="2", outcome="ok"
        )
        assert value(after, "balances_provider_resting", network="polygon", provider="1") == 1
        assert value(after, "balances_provider_resting", network="polygon", provider="2") == 0
        assert moved("balances_cache_lookups_total", network="polygon", result="miss") == 1
        assert moved("balances_snapshot_reads_total", network="polygon", outcome="ok") == 1
        await first.set_fault(None)

        # --- a webhook: configured, a transfer, three events delivered ------------------------
        hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        await hooks.UpdateWebhookConfig(
            wpb.UpdateWebhookConfigRequest(url=receiver.url, events=["balance.updated"]),
            timeout=10,
        )

        async def baseline_read() -> bool:
            _, now = await scrape(metrics_port)
            return value(now, "balances_follower_blocks_total", network="polygon") >= 1

        await poll_until(baseline_read, "the follower's baseline block")
        _, before = await scrape(metrics_port)
        await transfer(url, usdc, SENDER.address, RECEIVER.address, 10_000)
        await receiver.wait_until(lambda: len(receiver.acknowledged()) >= 3, timeout=15)

        async def delivered() -> bool:
            _, now = await scrape(metrics_port)
            return (
                value(now, "balances_webhook_attempts_total", outcome="delivered")
                - value(before, "balances_webhook_attempts_total", outcome="delivered")
                >= 3
                and value(now, "balances_webhook_outbox_pending") == 0
            )

        await poll_until(delivered, "three deliveries recorded")
        text, after = await scrape(metrics_port)
        assert (
            moved("balances_webhook_attempts_total", outcome="delivered")
            == len(receiver.acknowledged())
            == 3
        )
        assert moved("balances_webhook_attempts_total", outcome="failed") == 0
        assert moved("balances_follower_changes_total", network="polygon") == 3
        assert moved("balances_follower_blocks_total", network="polygon") >= 1
        assert value(after, "balances_webhook_outbox_oldest_seconds") == 0
        assert (
            value(after, "balances_follower_head_block", network="polygon")
            >= value(before, "balances_follower_head_block", network="polygon")
            > 0
        )
        assert value(after, "balances_leader", lease="balances:webhook-delivery") == 1
        assert value(after, "balances_leader", lease="balances:follower:polygon") == 1

        # --- canaries: no URL, no key, no address in any series or label ---------------------
        values = label_values(after)
        assert not any("://" in v or "127.0.0.1" in v for v in values), values
        secrets = [
            config.api_key,
            first.url,
            second.url,
            receiver.url,
            url,
            *(w.address for w in (SENDER, RECEIVER)),
        ]
        for secret in secrets:
            assert secret.lower() not in text.lower()
        assert not re.search(r"0x[0-9a-fA-F]{40}", text)


@asynccontextmanager
async def serving_workers(config_path: Path, count: int, tmp: Path) -> AsyncIterator[list[str]]:
    """``serve --workers count`` with ``tmp`` as its TMPDIR; stopped with SIGTERM (exit 0)."""
    process = await children.create_subprocess_exec(
        str(BALANCES), "serve", "--config", str(config_path), "--workers", str(count),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while raw := await process.stderr.readline():
                lines.append(raw.decode().rstrip("\n"))
                if "workers serving gRPC" in lines[-1]:
                    break
            else:
                raise AssertionError("serve exited before serving:\n" + "\n".join(lines))
        draining = asyncio.create_task(drain(process.stderr, lines))
        yield lines
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0
        await asyncio.wait_for(draining, 10)
    finally:
        for pid in processes_in_group(process.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await process.wait()


async def test_workers_metrics_are_summed_by_the_supervisor_and_its_directory_removed(
    world: DemoWorld, tmp_path: Path
) -> None:
    config = await write_stack_config(
        world,
        tmp_path,
        {name: [network.rpc_url] for name, network in world.networks.items()},
        metrics_listen="127.0.0.1:0",
    )
    calls = 6
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    async with serving_workers(config.path, 2, tmp) as lines:
        metrics_port = port_in(lines, METRICS_LINE)
        grpc_port = int(re.findall(r"serving gRPC on port (\d+)", lines[-1])[0])
        [directory] = list(tmp.iterdir())  # the workers' multiprocess files
        assert directory.name.startswith("balances-metrics-")
        _, before = await scrape(metrics_port)
        get = {"service": BALANCES_SERVICE, "method": "GetWalletBalance", "code": "OK"}
        # New connections, so the kernel spreads them over both workers.
        wallet = next(iter(world.wallets)).wallet_id
        for _ in range(calls):
            async with keyed_channel(f"127.0.0.1:{grpc_port}", config.api_key) as channel:
                stub = balances_pb2_grpc.BalancesServiceStub(channel)
                await stub.GetWalletBalance(
                    pb.GetWalletBalanceRequest(wallet_id=wallet), timeout=10
                )

        async def all_counted() -> bool:
            _, now = await scrape(metrics_port)
            return (
                value(now, "balances_grpc_requests_total", **get)
                - value(before, "balances_grpc_requests_total", **get)
                >= calls
            )

        await poll_until(all_counted, f"{calls} calls in the supervisor's sum")
        _, after = await scrape(metrics_port)
        assert (
            value(after, "balances_grpc_requests_total", **get)
            - value(before, "balances_grpc_requests_total", **get)
            == calls
        )
        assert value(after, "balances_tenant_requests_total", tenant="default") >= calls
        assert [k for k in after if k[0] == "balances_build_info"]
        # One worker leads each lease: the live workers' sum is 1 (no pid labels).
        leases = {dict(k[1])["lease"]: v for k, v in after.items() if k[0] == "balances_leader"}
        assert leases and all(v == 1 for v in leases.values()), leases
        assert not any(label == "pid" for (_, labels) in after for label, _ in labels)
        assert any(directory.glob("*.db"))
    assert not directory.exists()  # removed when the supervisor stopped
