"""The scenarios of issue 11, each with its reference, measured in the same run.

Two servers run, one after the other, from the same settings:

* the *counted* server reads its chains through ``RecordingProxy``: it counts
  the upstream calls of subscribing 1,000 watch streams and records the exact
  ``eth_call`` payloads of a cold customer read and of a watched block, which
  the raw references then replay;
* the *timed* server talks to anvil directly, and every timed figure is its.

Within a round every scenario runs service and reference back to back
(alternating which goes first), and the rounds repeat, so drift in the
machine's load hits both sides alike.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from grpc import aio

from balances.v1 import balances_pb2
from scripts.bench.load import LoadResult, grpc_frame, run_grpc_load, run_rest_load
from scripts.bench.processes import Server, start_reference, start_server
from scripts.bench.profile import Profile, profiled
from scripts.bench.proxy import RecordingProxy
from scripts.bench.world import (
    BenchTenant,
    BenchWorld,
    Sizes,
    rpc_batch,
    server_settings,
    set_token_balances,
)
from service.settings.render import render_settings
from service.store.sqlite import open_sqlite_stores

__all__ = ["Captured", "Measurements", "counted_phase", "timed_phase"]

_SERVICE = "/balances.v1.BalancesService"
_WALLET = f"{_SERVICE}/GetWalletBalance"
_CUSTOMER = f"{_SERVICE}/GetCustomerBalances"
_WATCH = f"{_SERVICE}/WatchWalletBalance"
_WATCH_CHANNELS = 4  # 1,000 streams over a few connections, as several clients would open
_TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass
class Captured:
    """What the counted server sent upstream, per network (each an ``eth_call`` body)."""

    cold: dict[str, list[bytes]] = field(default_factory=dict)
    big: dict[str, list[bytes]] = field(default_factory=dict)
    watch: dict[str, list[bytes]] = field(default_factory=dict)
    subscribe_eth_calls: int = 0
    subscribe_upstream_calls: int = 0  # every JSON-RPC method, not only eth_call
    subscribe_seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)  # scenario -> what failed


@dataclass
class Measurements:
    """Every sample, by scenario and round; ``report`` turns them into the table."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    directory_ms: list[float] = field(default_factory=list)
    subscribe_seconds: float = 0.0
    profiles: list[Profile] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # scenario -> first failure
    response_bytes: int = 0
    watch_message_bytes: int = 0  # the change message the bare watch server pushes


def _replayable(item: dict[str, Any]) -> bytes:
    """One recorded ``eth_call`` as a request body, read at ``latest`` (same cost)."""
    call, _block = item["params"]
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [call, "latest"]}
    ).encode()


def _failure(server: Server, what: str) -> str:
    """``what``, with the server's last warning (the reason, usually)."""
    assert server.log_path is not None
    warnings = [
        line.split(": ", 1)[-1]
        for line in server.log_path.read_text(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line
    ]
    return f"{what}; server log: {warnings[-1][:300]}" if warnings else what


def _metadata(tenant: BenchTenant) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", tenant.api_key),)


async def _write_config(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.toml"
    await asyncio.to_thread(path.write_text, text)
    return path


class _Watchers:
    """``count`` watch streams of raw bytes; counts messages and when the last came."""

    def __init__(self, target: str, tenant: BenchTenant, count: int) -> None:
        self._channels = [aio.insecure_channel(target) for _ in range(_WATCH_CHANNELS)]
        self._tenant = tenant
        self._count = count
        self.received = 0
        self.last_arrival = 0.0
        self.last_message = b""
        self._wanted = 0
        self._reached = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _follow(self, wallet_id: str, channel: aio.Channel) -> None:
        call = channel.unary_stream(_WATCH, None, None)(
            balances_pb2.WatchWalletBalanceRequest(wallet_id=wallet_id).SerializeToString(),
            metadata=_metadata(self._tenant),
        )
        async for message in call:
            self.received += 1
            self.last_arrival = time.perf_counter()
            self.last_message = message
            if self.received >= self._wanted:
                self._reached.set()

    async def wait_for(self, more: int, timeout: float = 120, since: int | None = None) -> float:
        """Wait until ``more`` messages beyond those counted (or ``since``, a count taken
        before they were caused); when the last came."""
        self._wanted = (self.received if since is None else since) + more
        self._reached.clear()
        if self.received < self._wanted:
            await asyncio.wait_for(self._reached.wait(), timeout)
        return self.last_arrival

    async def open(self) -> float:
        """Open every stream; seconds until each has its first message."""
        started = time.perf_counter()
        self._wanted = self._count
        for i, wallet_id in enumerate(self._tenant.wallet_ids[: self._count]):
            channel = self._channels[i % len(self._channels)]
            self._tasks.append(asyncio.create_task(self._follow(wallet_id, channel)))
        await asyncio.wait_for(self._reached.wait(), 300)
        return time.perf_counter() - started

    def push_call(self) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """The bare watch reference's ``bench.Push/Push`` (bytes in, bytes out)."""
        return self._channels[0].unary_unary("/bench.Push/Push", None, None)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close(None)


async def _change_watched(world: BenchWorld, addresses: list[str], round_: int) -> None:
    """New USDC balances for every watched address (written to storage), then one block."""
    chain = world.demo.networks["polygon"]
    token = chain.tokens["USDC"]
    amounts = [(a, 7_000_000 + round_ * 1_000 + i) for i, a in enumerate(addresses)]
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        await set_token_balances(session, chain.rpc_url, token, world.balance_slots[token], amounts)


async def _mine(session: aiohttp.ClientSession, url: str) -> None:
    await rpc_batch(session, url, [("anvil_mine", ["0x1"])])


async def counted_phase(
    world: BenchWorld, sizes: Sizes, directory: Path, workdir: Path
) -> Captured:
    """Upstream calls counted, and the payloads the raw references replay."""
    captured = Captured()
    assert world.capture_watch and world.capture_cold and world.capture_big
    async with AsyncExitStack() as stack:
        proxies = {
            name: await stack.enter_async_context(RecordingProxy(node.url))
            for name, node in world.nodes.items()
        }
        settings = server_settings(
            world, directory, rest=False, rpc_urls={n: [p.url] for n, p in proxies.items()}
        )
        config = await _write_config(workdir, "counted", render_settings(settings))
        server = await start_server(stack, "counted", config, workdir)
        target = f"127.0.0.1:{server.grpc_port}"
        polygon = proxies["polygon"]

        # Subscribing: every upstream call from the first stream opened until all have their
        # first message and the follower has settled (it may read a baseline).
        watchers = _Watchers(target, world.capture_watch, sizes.watchers)
        stack.push_async_callback(watchers.aclose)
        marks = {n: p.mark() for n, p in proxies.items()}
        captured.subscribe_seconds = await watchers.open()
        await asyncio.sleep(2.5)  # > the follower's poll interval
        captured.subscribe_eth_calls = sum(
            len(p.since(marks[n], "eth_call")) for n, p in proxies.items()
        )
        captured.subscribe_upstream_calls = sum(len(p.since(marks[n])) for n, p in proxies.items())

        # One block that changes every watched balance: the follower's read is the payload.
        watched = world.big_addresses[: sizes.watchers]
        await _change_watched(world, watched, 0)
        mark = polygon.mark()
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            await _mine(session, world.nodes["polygon"].url)
        try:
            await watchers.wait_for(sizes.watchers, timeout=30)
        except TimeoutError:
            captured.errors["watch"] = _failure(server, "no message within 30 s")
        await asyncio.sleep(0.3)
        captured.watch = {"polygon": [_replayable(i) for i in polygon.since(mark, "eth_call")]}
        await watchers.aclose()

        async with aio.insecure_channel(target) as channel:
            call = channel.unary_unary(_CUSTOMER, None, None)
            for tenant, into in ((world.capture_cold, "cold"), (world.capture_big, "big")):
                marks = {n: p.mark() for n, p in proxies.items()}
                request = balances_pb2.GetCustomerBalancesRequest(customer_id=tenant.customer_id)
                try:
                    await call(request.SerializeToString(), metadata=_metadata(tenant), timeout=60)
                except aio.AioRpcError as error:  # what it sent upstream is recorded all the same
                    captured.errors[into] = f"{error.code().name}: {error.details()}"
                bodies = {
                    n: [_replayable(i) for i in p.since(marks[n], "eth_call")]
                    for n, p in proxies.items()
                }
                setattr(captured, into, {n: b for n, b in bodies.items() if b})
    return captured


async def _replay(
    session: aiohttp.ClientSession,
    urls: dict[str, str],
    bodies: dict[str, list[bytes]],
    errors: dict[str, str] | None = None,
    key: str = "",
) -> float:
    """Seconds to post every recorded body at once (all networks) and read every answer.

    A node's error answer is noted in ``errors[key]`` (the timing stands: the node did the
    work) or, without ``errors``, raised."""

    async def post(url: str, body: bytes) -> None:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            answer = await r.read()
        if r.status != 200 or b'"error"' in answer:
            problem = f"raw eth_call answered {r.status}: {answer[:200].decode(errors='replace')}"
            if errors is None:
                raise RuntimeError(problem)
            errors.setdefault(key, problem)

    started = time.perf_counter()
    await asyncio.gather(
        *(post(urls[network], body) for network, batch in bodies.items() for body in batch)
    )
    return time.perf_counter() - started


async def _timed_call(
    call: Callable[..., Awaitable[bytes]], request: bytes, tenant: BenchTenant
) -> float:
    started = time.perf_counter()
    await call(request, metadata=_metadata(tenant), timeout=120)
    return time.perf_counter() - started


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def _check_grpc(
    call: Callable[..., Awaitable[bytes]], request: bytes, tenant: BenchTenant, expected: bytes
) -> str | None:
    """The short Python pass after a load run: status OK and the very bytes, 20 times."""
    for _ in range(20):
        try:
            answer = await call(request, metadata=_metadata(tenant), timeout=10)
        except aio.AioRpcError as error:
            return f"gRPC {error.code().name}"
        if answer != expected:
            return "gRPC answer differs from the captured response"
    return None


async def _check_rest(
    session: aiohttp.ClientSession, url: str, key: str, expected: bytes
) -> str | None:
    for _ in range(20):
        async with session.get(url, headers={"X-API-Key": key}) as answer:
            body = await answer.read()
            if answer.status != 200 or json.loads(body) != json.loads(expected):
                return f"REST {answer.status}"
    return None


async def timed_phase(
    world: BenchWorld,
    sizes: Sizes,
    captured: Captured,
    directory: Path,
    workdir: Path,
    tools: dict[str, str | None],
    *,
    profile_targets: Callable[[Measurements], set[str]],
) -> Measurements:
    """Every timed scenario, interleaved over ``sizes.repeats`` rounds, then profiles."""
    m = Measurements()
    assert world.warm and world.watch
    warm = world.warm
    h2load, wrk, py_spy = tools.get("h2load"), tools.get("wrk"), tools.get("py-spy")
    urls = {name: node.url for name, node in world.nodes.items()}
    seconds = sizes.load_seconds
    async with AsyncExitStack() as stack:
        settings = server_settings(world, directory, rest=True)
        config = await _write_config(workdir, "timed", render_settings(settings))
        server = await start_server(stack, "timed", config, workdir)
        target = f"127.0.0.1:{server.grpc_port}"
        rest_url = f"http://127.0.0.1:{server.rest_port}/v1/wallets/{warm.wallet_ids[0]}/balance"
        channel = await stack.enter_async_context(aio.insecure_channel(target))
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=_TIMEOUT))
        wallet_call = channel.unary_unary(_WALLET, None, None)  # bytes in, bytes out
        customer_call = channel.unary_unary(_CUSTOMER, None, None)

        # The service's own answers: what the bare servers send back.
        wallet_request = balances_pb2.GetWalletBalanceRequest(wallet_id=warm.wallet_ids[0])
        request_bytes = wallet_request.SerializeToString()
        response = await wallet_call(request_bytes, metadata=_metadata(warm), timeout=30)
        m.response_bytes = len(response)
        async with session.get(rest_url, headers={"X-API-Key": warm.api_key}) as answer:
            rest_json = await answer.read()
        files = {"grpc": workdir / "response.bin", "rest": workdir / "response.json"}
        await asyncio.to_thread(files["grpc"].write_bytes, response)
        await asyncio.to_thread(files["rest"].write_bytes, rest_json)
        request_file = workdir / "request.bin"
        await asyncio.to_thread(request_file.write_bytes, grpc_frame(request_bytes))
        bare_grpc = await start_reference(stack, "grpc", files["grpc"])
        bare_rest = await start_reference(stack, "rest", files["rest"])
        bare_rest_url = (
            f"http://127.0.0.1:{bare_rest.rest_port}/v1/wallets/{warm.wallet_ids[0]}/balance"
        )

        async def grpc_load(on: Server, concurrency: int, secs: float = seconds) -> LoadResult:
            result = await run_grpc_load(
                h2load, port=on.grpc_port, method=_WALLET, request_file=request_file,
                response=response, api_key=warm.api_key, concurrency=concurrency,
                seconds=secs, pid=on.pid,
            )  # fmt: skip
            m.tools["grpc"] = result.tool
            if result.command and secs == seconds:
                m.commands[f"grpc c{concurrency}"] = result.command
            return result

        async def rest_load(
            url: str, on: Server, concurrency: int, secs: float = seconds
        ) -> LoadResult:
            result = await run_rest_load(
                wrk,
                url=url,
                api_key=warm.api_key,
                concurrency=concurrency,
                seconds=secs,
                pid=on.pid,
            )
            m.tools["rest"] = result.tool
            if result.command and secs == seconds:
                m.commands[f"rest c{concurrency}"] = result.command.replace(url, "URL")
            return result

        # Warm everything once (caches, connections), unmeasured.
        await grpc_load(server, 8, 1)
        await grpc_load(bare_grpc, 8, 1)
        await rest_load(rest_url, server, 8, 1)
        await rest_load(bare_rest_url, bare_rest, 8, 1)
        await _replay(session, urls, captured.cold)  # the raw side's connections too

        stores = await open_sqlite_stores(directory)
        stack.push_async_callback(stores.aclose)
        per_round = max(len(world.directory_customers) // sizes.repeats, 1)
        per_small = max(len(world.small_directory_customers) // sizes.repeats, 1)

        cold_tenants = iter(world.cold)
        big_tenants = iter(world.big)
        for r in range(sizes.repeats):
            print(f"bench: round {r + 1} of {sizes.repeats}", flush=True)
            row: dict[str, Any] = {}
            flip = r % 2 == 1  # which side goes first alternates

            for concurrency in (8, 32):
                pair = [("service", server), ("bare", bare_grpc)]
                for side, on in reversed(pair) if flip else pair:
                    row[f"grpc c{concurrency} {side}"] = await grpc_load(on, concurrency)
            pair_rest = [("service", rest_url, server), ("bare", bare_rest_url, bare_rest)]
            for side, url, on in reversed(pair_rest) if flip else pair_rest:
                row[f"rest c8 {side}"] = await rest_load(url, on, 8)
            for problem in (
                await _check_grpc(wallet_call, request_bytes, warm, response),
                await _check_rest(session, rest_url, warm.api_key, rest_json),
            ):
                if problem:
                    m.checks.append(f"round {r + 1}: {problem}")

            for key, tenants, bodies, samples in (
                ("cold", cold_tenants, captured.cold, sizes.cold_samples),
                ("big", big_tenants, captured.big, sizes.big_samples),
            ):
                service_s, raw_s = [], []
                for s in range(samples):
                    tenant = next(tenants)
                    request = balances_pb2.GetCustomerBalancesRequest(
                        customer_id=tenant.customer_id
                    ).SerializeToString()
                    if (s + r) % 2:
                        raw_s.append(await _replay(session, urls, bodies, m.errors, f"{key} raw"))
                    try:
                        service_s.append(await _timed_call(customer_call, request, tenant))
                    except aio.AioRpcError as error:
                        m.errors.setdefault(key, f"{error.code().name}: {error.details()}")
                    if not (s + r) % 2:
                        raw_s.append(await _replay(session, urls, bodies, m.errors, f"{key} raw"))
                if service_s:
                    row[f"{key} service"] = _median(service_s)
                row[f"{key} raw"] = _median(raw_s)

            # A customer is looked up once only: a store that caches must still read it.
            lookups = world.directory_customers[r * per_round : (r + 1) * per_round]
            small = world.small_directory_customers[r * per_small : (r + 1) * per_small]
            for tenant_name, customers, into in (
                (world.directory_tenant, lookups, "directory"),
                (world.small_directory_tenant, small, "directory small"),
            ):
                took = []
                for customer in customers:
                    started = time.perf_counter()
                    found = await stores.wallets.customer_wallets(tenant_name, customer)
                    took.append(time.perf_counter() - started)
                    if len(found) != sizes.directory_customer_wallets:
                        m.checks.append(f"{tenant_name}/{customer}: {len(found)} wallets")
                if into == "directory":
                    m.directory_ms.extend(t * 1000 for t in took)
                row[into] = _median(took)
            m.rounds.append(row)

        # Watch: 1,000 streams, one block per round changing every watched balance.
        print("bench: watch", flush=True)
        watchers = _Watchers(target, world.watch, sizes.watchers)
        stack.push_async_callback(watchers.aclose)
        m.subscribe_seconds = await watchers.open()
        await asyncio.sleep(2.5)  # the follower has its baseline
        watched = world.big_addresses[: sizes.watchers]
        await _replay(session, urls, captured.watch, m.errors, "watch raw")
        # The fan-out bound: a bare grpc.aio server pushing one of the service's own change
        # messages to as many open streams (one warm-up block gives that message).
        await _change_watched(world, watched, 50)
        await _mine(session, urls["polygon"])
        await watchers.wait_for(sizes.watchers, timeout=30)
        message_file = workdir / "watch-message.bin"
        await asyncio.to_thread(message_file.write_bytes, watchers.last_message)
        m.watch_message_bytes = len(watchers.last_message)
        bare_watch = await start_reference(stack, "watch", message_file)
        bare_watchers = _Watchers(f"127.0.0.1:{bare_watch.grpc_port}", world.watch, sizes.watchers)
        stack.push_async_callback(bare_watchers.aclose)
        await bare_watchers.open()
        push = bare_watchers.push_call()

        async def bare_push() -> float | None:
            before = bare_watchers.received  # its messages may all come before push returns
            started = time.perf_counter()
            try:
                await push(b"", timeout=30)
                last = await bare_watchers.wait_for(sizes.watchers, timeout=30, since=before)
                return last - started
            except (TimeoutError, aio.AioRpcError) as error:
                m.errors.setdefault("watch bare push", f"{type(error).__name__}")
                return None

        await bare_push()
        for r in range(sizes.repeats):
            raw_first = r % 2 == 1
            raw, bare = 0.0, None
            if raw_first:
                raw = await _replay(session, urls, captured.watch, m.errors, "watch raw")
                bare = await bare_push()
            await _change_watched(world, watched, r + 1)
            await _mine(session, urls["polygon"])
            mined = time.perf_counter()
            try:
                last = await watchers.wait_for(sizes.watchers, timeout=30)
            except TimeoutError:
                m.errors["watch"] = _failure(server, "no message within 30 s")
                break
            if not raw_first:
                raw = await _replay(session, urls, captured.watch, m.errors, "watch raw")
                bare = await bare_push()
            m.rounds[r]["watch service"] = last - mined
            m.rounds[r]["watch raw"] = raw
            m.rounds[r]["watch bare push"] = bare
        await bare_watchers.aclose()

        # Profiles of the paths whose target was missed (decided on the figures above).
        missed = profile_targets(m)
        profile_dir = workdir
        if "watch" in missed and "watch" not in m.errors:
            async with profiled(
                py_spy,
                server.pid,
                f"watch: block -> {sizes.watchers:,} messages (3 blocks)",
                profile_dir,
                m.profiles,
            ):
                for r in range(3):
                    await _change_watched(world, watched, 100 + r)
                    await _mine(session, urls["polygon"])
                    await watchers.wait_for(sizes.watchers)
        await watchers.aclose()
        if "warm" in missed:
            async with profiled(
                py_spy,
                server.pid,
                "warm GetWalletBalance, h2load 32 concurrent",
                profile_dir,
                m.profiles,
            ):
                await grpc_load(server, 32, 5)
        if "rest" in missed:
            async with profiled(
                py_spy,
                server.pid,
                "warm REST GET balance, wrk 8 connections",
                profile_dir,
                m.profiles,
            ):
                await rest_load(rest_url, server, 8, 5)
        wallets = 2 * sizes.cold_wallets_per_network
        for key, profiled_tenants, what in (
            ("cold", world.profile_cold, f"{wallets} wallets x 3 tokens, 2 networks"),
            ("big", world.profile_big, f"{sizes.big_wallets:,} wallets, 1 network"),
        ):
            if key not in missed or not profiled_tenants or key in m.errors:
                continue
            title = f"cold GetCustomerBalances, {what}: {len(profiled_tenants)} calls"
            async with profiled(py_spy, server.pid, title, profile_dir, m.profiles):
                for tenant in profiled_tenants:
                    message = balances_pb2.GetCustomerBalancesRequest(
                        customer_id=tenant.customer_id
                    )
                    await _timed_call(customer_call, message.SerializeToString(), tenant)
    return m
