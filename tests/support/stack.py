"""A running Balances server in front of real anvil chains, for integration tests.

``Stack`` = counting JSON-RPC proxies in front of the session's chains,
settings built for them (and written as TOML for ``balances`` subprocesses), a fresh wallet directory with the demo wallets,
and a real grpc.aio server on a free port with a channel to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from grpc import aio

from balances.v1 import balances_pb2_grpc
from service.auth.keys import new_api_key
from service.devchain.world import DemoWorld, demo_settings, write_wallet_file
from service.domain import DEFAULT_TENANT
from service.grpc_server import create_server
from service.importfile import import_wallet_file
from service.settings import Settings, load_settings
from service.settings.render import render_settings
from service.store.stores import open_stores
from service.wiring import Service, open_service
from tests.support.rpc_proxy import CountingProxy


def _with_key(details: aio.ClientCallDetails, api_key: str) -> aio.ClientCallDetails:
    metadata = [*(details.metadata or ()), ("x-api-key", api_key)]
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio picks an interceptor's kind by its base class, and takes only one kind
# per instance: unary and streaming calls need one class each.
class UnaryApiKeyInterceptor(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds ``x-api-key`` to every unary call, as an authenticated client would."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_key(details, self._api_key), request)


class StreamApiKeyInterceptor(aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds ``x-api-key`` to every server-streaming call."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_key(details, self._api_key), request)


def keyed_channel(target: str, api_key: str) -> aio.Channel:
    return aio.insecure_channel(
        target,
        interceptors=[UnaryApiKeyInterceptor(api_key), StreamApiKeyInterceptor(api_key)],
    )


@dataclass
class StackConfig:
    path: Path  # ``settings`` as a TOML file, for a ``balances`` subprocess
    settings: Settings
    api_key: str  # a key of tenant "default", which owns the demo wallets


@dataclass
class Stack:
    world: DemoWorld
    settings: Settings
    service: Service
    proxies: dict[str, CountingProxy]
    target: str
    channel: aio.Channel  # sends no API key: for the gateway and for auth tests
    keyed: aio.Channel  # sends ``api_key`` on every call
    stub: balances_pb2_grpc.BalancesServiceStub  # on ``keyed``
    config_path: Path
    api_key: str

    def eth_calls(self) -> dict[str, int]:
        return {name: p.counts["eth_call"] for name, p in self.proxies.items()}

    def reset_counts(self) -> None:
        for proxy in self.proxies.values():
            proxy.reset()


async def write_stack_config(
    world: DemoWorld,
    tmp_path: Path,
    rpc_urls: Mapping[str, Sequence[str]],
    *,
    network_changes: Mapping[str, Mapping[str, Any]] | None = None,
    extra_toml: str = "",
    cache_ttl_seconds: float = 30,
    **changes: Any,
) -> StackConfig:
    """Settings for ``world`` with ``changes`` (fields of ``Settings``), a wallet directory
    holding its wallets and a fresh API key.  ``extra_toml`` is appended to the written file
    (and the settings are then read back from it): only for tests of TOML text itself."""
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    settings = replace(
        demo_settings(
            world,
            listen="127.0.0.1:0",
            directory_path=tmp_path / "wallets.sqlite3",
            rpc_urls=rpc_urls,
            cache_ttl_seconds=cache_ttl_seconds,
            network_changes=network_changes,
        ),
        **changes,
    )
    config_path = tmp_path / "balances.toml"
    config_path.write_text(render_settings(settings) + extra_toml)
    if extra_toml:
        settings = load_settings(config_path)
    wallets_path = tmp_path / "wallets.json"
    write_wallet_file(wallets_path, world.wallets)
    stores = await open_stores(settings)  # SQLite, or PostgreSQL with directory_url
    key = new_api_key()
    try:
        await import_wallet_file(
            stores.wallets, wallets_path, DEFAULT_TENANT, [n.name for n in settings.networks]
        )
        await stores.api_keys.add_key(key.key_id, DEFAULT_TENANT, key.digest)
    finally:
        await stores.aclose()
    return StackConfig(config_path, settings, key.plaintext)


@asynccontextmanager
async def running_stack(
    world: DemoWorld,
    tmp_path: Path,
    *,
    network_changes: Mapping[str, Mapping[str, Any]] | None = None,
    urls_before_proxy: dict[str, list[str]] | None = None,
    cache_ttl_seconds: float = 30,
    **changes: Any,
) -> AsyncIterator[Stack]:
    """A server reading ``world`` through counting proxies; everything closed on exit."""
    async with AsyncExitStack() as stack:
        proxies = {
            name: await stack.enter_async_context(CountingProxy(network.rpc_url))
            for name, network in world.networks.items()
        }
        rpc_urls = {
            name: [*(urls_before_proxy or {}).get(name, []), proxy.url]
            for name, proxy in proxies.items()
        }
        config = await write_stack_config(
            world,
            tmp_path,
            rpc_urls,
            network_changes=network_changes,
            cache_ttl_seconds=cache_ttl_seconds,
            **changes,
        )
        settings = config.settings
        service = await stack.enter_async_context(open_service(settings))
        server, port, _health = create_server(service, settings.listen)
        await server.start()
        stack.push_async_callback(server.stop, None)
        target = f"127.0.0.1:{port}"
        channel = aio.insecure_channel(target)
        stack.push_async_callback(channel.close)
        keyed = keyed_channel(target, config.api_key)
        stack.push_async_callback(keyed.close)
        for proxy in proxies.values():
            proxy.reset()  # start-up checks (eth_chainId, eth_getCode) are not the test's
        yield Stack(
            world,
            settings,
            service,
            proxies,
            target,
            channel,
            keyed,
            balances_pb2_grpc.BalancesServiceStub(keyed),
            config.path,
            config.api_key,
        )
