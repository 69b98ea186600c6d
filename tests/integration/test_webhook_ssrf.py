"""Webhook destinations through the real server (``serve()``: gRPC and REST, the system's
resolver): internal URLs are INVALID_ARGUMENT / 400 naming the rule and never the URL; a
URL stored before these rules is refused again at delivery, with no connection; the
allowlisted development receiver (by name, resolved by the system) gets its webhooks; a
development receiver on one of the service's own ports is refused at config load, and the
ports bound at run time are the ones the rules are given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from balances.v1 import webhooks_pb2 as wpb
from balances.v1 import webhooks_pb2_grpc
from service.auth.keys import new_api_key
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mine, transfer
from service.run import ServingPorts, serve
from service.settings import RestSettings, Settings, WatchSettings, WebhookSettings
from service.store.sqlite import open_sqlite_stores
from service.webhooks.signing import new_secret
from service.wiring import Service
from tests.support.cli import OFFLINE_CONFIG, assert_one_line_error, run_balances
from tests.support.monitoring import RECEIVER, SENDER, monitored_world, verified
from tests.support.stack import keyed_channel, write_stack_config
from tests.support.webhook_receiver import HOOK_PATH, WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLL = 0.1
# (URL, what the refusal says): a handful of each kind, through both APIs.
REFUSED = [
    ("https://127.0.0.1/hook", "is a loopback address"),
    ("https://[::1]/hook", "is a loopback address"),
    ("https://169.254.169.254/latest/meta-data/", "is a link-local address"),
    ("https://[::ffff:a9fe:a9fe]/latest/meta-data/", "is a link-local address"),
    ("https://[fd00:ec2::254]/latest/meta-data/", "is a private address"),
    ("https://10.0.0.1/hook", "is a private address"),
    ("https://2130706433/hook", "canonical name or address"),
    ("https://0x7f000001/hook", "canonical name or address"),
    ("https://127.1/hook", "canonical name or address"),
    ("https://localhost/hook", "internal name"),
    ("https://localhost./hook", "canonical name or address"),
    ("https://metadata.google.internal/computeMetadata/v1/", "internal name"),
    ("https://kubernetes.default.svc/api", "internal name"),
    ("http://localhost:22/", "must use https"),  # the development receiver's host, not port
]


class Listener:
    """A real loopback server counting the connections it accepts."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@asynccontextmanager
async def serving(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ServingPorts, list[tuple[Service, tuple[int | None, ...]]]]]:
    """``serve()`` in this process; (its ports, what it told ``Service.listening_on``)."""
    told: list[tuple[Service, tuple[int | None, ...]]] = []
    original = Service.listening_on

    def spy(service: Service, *ports: int | None) -> None:
        told.append((service, ports))
        original(service, *ports)

    monkeypatch.setattr(Service, "listening_on", spy)
    ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, on_ready=ready.set_result, stop=stop))
    try:
        either: set[asyncio.Future[Any]] = {ready, server}
        await asyncio.wait(either, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()  # serve() failed to start: its error
        yield ready.result(), told
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


def says_nothing_internal(text: str, urls: Iterable[str]) -> bool:
    return not any(url in text for url in urls) and "127.0.0.1" not in text


async def test_internal_urls_refused_by_rest_grpc_and_delivery_and_the_dev_receiver_works(
    start_anvil: AnvilFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await monitored_world(start_anvil)
    node = world.networks["polygon"]
    async with WebhookReceiver() as receiver, Listener() as listener:
        config = await write_stack_config(
            world,
            tmp_path,
            {"polygon": [node.rpc_url]},
            rest=RestSettings(listen="127.0.0.1:0"),
            watch=WatchSettings(poll_interval_seconds=POLL),
            webhooks=WebhookSettings(
                # By name: delivery looks "localhost" up with the system's resolver.
                allow_http_hosts=(f"localhost:{receiver.port}",),
                timeout_seconds=2,
                retry_schedule_seconds=(0.1, 0.2),
            ),
        )
        # Tenant "other" holds the receiving wallet's address too, with a webhook URL
        # stored before these rules existed: a loopback port of its choosing.
        other = new_api_key()
        stale_url = f"https://127.0.0.1:{listener.port}/hook"
        stores = await open_sqlite_stores(config.settings.directory_path)
        try:
            await stores.api_keys.add_key(other.key_id, "other", other.digest)
            await stores.wallets.register_wallet("other", "cus_other", "polygon", RECEIVER.address)
            await stores.webhooks.save_webhook_config(
                "other",
                url=stale_url,
                events=("balance.updated",),
                new_secret=new_secret(),
                rotate_secret=False,
            )
        finally:
            await stores.aclose()

        async with (
            serving(config.settings, monkeypatch) as (ports, told),
            keyed_channel(f"127.0.0.1:{ports.grpc}", config.api_key) as channel,
            aiohttp.ClientSession() as http,
        ):
            # serve() gave the rules exactly the ports it bound (both were port 0).
            assert [ports_told for _, ports_told in told] == [(ports.grpc, ports.rest)]
            hooks: Any = webhooks_pb2_grpc.WebhooksServiceStub(channel)
            base = f"http://127.0.0.1:{ports.rest}/v1/webhooks"
            headers = {"X-API-Key": config.api_key}
            refused = [
                *REFUSED,
                (f"https://127.0.0.1:{listener.port}/hook", "is a loopback address"),
                (f"http://127.0.0.1:{ports.grpc}/", "must use https"),  # the service's own
                (f"http://127.0.0.1:{receiver.port}{HOOK_PATH}", "must use https"),  # not by name
            ]
            for url, reason in refused:
                with pytest.raises(aio.AioRpcError) as caught:
                    await hooks.UpdateWebhookConfig(wpb.UpdateWebhookConfigRequest(url=url))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
                details = caught.value.details() or ""
                assert reason in details and says_nothing_internal(details, [url]), details
                async with http.patch(base, headers=headers, json={"url": url}) as response:
                    text = await response.text()
                    assert response.status == 400, (url, text)
                    body = await response.json()
                assert body["code"] == 3 and reason in body["message"], body
                assert says_nothing_internal(text, [url]), text
            async with http.get(base, headers=headers) as response:
                assert response.status == 404  # nothing was stored

            # The development receiver, over REST.
            dev_url = f"http://localhost:{receiver.port}{HOOK_PATH}"
            async with http.patch(base, headers=headers, json={"url": dev_url}) as response:
                body = await response.json()
                assert response.status == 200, body
            secret = body["secret"]

            await mine(node.rpc_url)
            await asyncio.sleep(5 * POLL)  # the follower's baseline, with both configs
            await transfer(
                node.rpc_url, node.tokens["USDC"], SENDER.address, RECEIVER.address, 10_000
            )
            await receiver.wait_until(lambda: len(receiver.received) >= 3)
            delivered = {
                (data["wallet_id"], data["currency"])
                for data in (verified(secret, hit)["data"] for hit in receiver.received)
            }
            assert delivered == {
                (SENDER.wallet_id, "USDC"),
                (SENDER.wallet_id, "POL"),
                (RECEIVER.wallet_id, "USDC"),
            }
            service = told[0][0]
            async with asyncio.timeout(10):
                while True:
                    events = await service.stores.webhooks.webhook_events("other")
                    if events and all(e.status == "failed" for e in events):
                        break
                    await asyncio.sleep(0.05)
    (event,) = events
    assert event.attempts == 3
    assert event.last_error == "url no longer allowed: url host is a loopback address"
    assert listener.accepted == 0  # the tenant's loopback port never saw a connection


async def test_a_development_receiver_on_the_services_own_port_stops_the_server_at_load(
    tmp_path: Path,
) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(
        OFFLINE_CONFIG
        + '\n[server]\nlisten = "127.0.0.1:50999"\n'
        + '\n[rest]\nlisten = "127.0.0.1:50998"\n'
        + '\n[webhooks]\nallow_http_hosts = ["127.0.0.1:8099", "localhost:50998"]\n'
    )
    code, _, stderr = await run_balances("serve", "--config", str(config), cwd=tmp_path)
    assert_one_line_error(code, stderr, "webhooks.allow_http_hosts[1]", "own ports")
    assert not (tmp_path / "wallets.sqlite3").exists()  # refused before anything opened
