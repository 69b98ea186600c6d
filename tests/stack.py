"""A running Balances server in front of real anvil chains, for integration tests.

``Stack`` = counting JSON-RPC proxies in front of the session's chains, a
config file written for them, a fresh wallet directory with the demo wallets,
and a real grpc.aio server on a free port with a channel to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from balances.v1 import balances_pb2_grpc
from service.auth.keys import new_api_key
from service.config import Settings, load_settings
from service.devchain.world import DemoWorld, render_config, write_wallet_file
from service.directory.importfile import import_wallet_file
from service.directory.sqlite import SqliteWalletDirectory
from service.domain import DEFAULT_TENANT
from service.server import Components, build_components, create_server
from tests.rpc_proxy import CountingProxy


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
    path: Path
    api_key: str  # a key of tenant "default", which owns the demo wallets


@dataclass
class Stack:
    world: DemoWorld
    settings: Settings
    components: Components
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
    rpc_urls: dict[str, list[str]],
    *,
    extra_network_lines: dict[str, list[str]] | None = None,
    extra_toml: str = "",
    cache_ttl_seconds: float = 30,
) -> StackConfig:
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    config_path = tmp_path / "balances.toml"
    config_path.write_text(
        render_config(
            world,
            listen="127.0.0.1:0",
            directory_path="wallets.sqlite3",
            rpc_urls=rpc_urls,
            cache_ttl_seconds=cache_ttl_seconds,
            extra_network_lines=extra_network_lines,
        )
        + extra_toml
    )
    wallets_path = tmp_path / "wallets.json"
    write_wallet_file(wallets_path, world.wallets)
    settings = load_settings(config_path)
    directory = await SqliteWalletDirectory.open(settings.directory_path)
    key = new_api_key()
    try:
        await import_wallet_file(
            directory, wallets_path, DEFAULT_TENANT, [n.name for n in settings.networks]
        )
        await directory.add_key(key.key_id, DEFAULT_TENANT, key.digest)
    finally:
        await directory.close()
    return StackConfig(config_path, key.plaintext)


@asynccontextmanager
async def running_stack(
    world: DemoWorld,
    tmp_path: Path,
    *,
    extra_network_lines: dict[str, list[str]] | None = None,
    extra_toml: str = "",
    urls_before_proxy: dict[str, list[str]] | None = None,
    cache_ttl_seconds: float = 30,
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
            extra_network_lines=extra_network_lines,
            extra_toml=extra_toml,
            cache_ttl_seconds=cache_ttl_seconds,
        )
        settings = load_settings(config.path)
        components = await build_components(settings)
        stack.push_async_callback(components.aclose)
        server, port, _health = create_server(components, settings.listen)
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
            components,
            proxies,
            target,
            channel,
            keyed,
            balances_pb2_grpc.BalancesServiceStub(keyed),
            config.path,
            config.api_key,
        )
