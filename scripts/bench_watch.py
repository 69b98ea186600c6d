"""Watch fan-out and subscription cost, against a raw read of the same addresses, in one run.

Starts a local anvil chain with the demo polygon world (USDC, USDT, POL) and a
real server in this process (``open_service`` + ``create_server``, as the
integration tests run it) with ``--streams`` / ``--per-wallet`` wallets of one
tenant, each watched by ``--per-wallet`` streams.  The follower is not started
but ticked by hand right after the block is mined (as a newHeads subscription
wakes it), so every time below starts when the block exists:

1. **in process**: the streams are ``BalanceWatches.watch_wallet`` generators,
   each message converted (``wallet_watch_response``) and encoded
   (``SerializeToString``) as the servicer and grpc do: the service's own work,
   no transport.  Printed with the phases: snapshot read done, last message.
2. **over gRPC**: ``WatchWalletBalance`` calls over a real socket to the
   server, the client in this same process (its receiving costs CPU here too).
3. **bare grpc.aio**: the transport floor: a bare server whose every stream
   sends a prebuilt message (the service's own bytes) to the same client.

For 1 and 2 the streams are opened first, and the ``eth_call``s that cost
(counted by a proxy in front of the node) and the time are printed.  Then for
``--rounds`` rounds: every wallet's native balance is set and ONE block mined;
from then until the last stream has its message; and after each round a
**raw read**: the same ``aggregate3`` payloads the reader sends (encoded
beforehand), posted at once, bytes back, no decoding (the floor of a read).
Medians, ranges and ratios to the raw read are printed, and each round's
time in the garbage collector (a full collection of this heap takes ~100 ms:
``--gc-freeze`` freezes the heap once the streams are open, as a server could
once started).  ``--profile FILE`` writes a cProfile of the in-process rounds.

    .venv/bin/python scripts/bench_watch.py [--streams 1000] [--per-wallet 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from eth_abi import encode
from eth_utils.address import to_checksum_address
from grpc import aio

from balances.v1 import balances_pb2, balances_pb2_grpc
from service.api.convert import wallet_watch_response
from service.auth.keys import new_api_key
from service.devchain.anvil import AnvilNode
from service.devchain.deploy import mine, set_native_balance
from service.devchain.world import (
    POLYGON,
    DemoWallet,
    DemoWorld,
    demo_settings,
    deploy_network,
    write_wallet_file,
)
from service.domain import DEFAULT_TENANT
from service.grpc_server import create_server
from service.importfile import import_wallet_file
from service.settings.model import LimitsSettings
from service.store.sqlite import open_sqlite_stores
from service.wiring import open_service

AGGREGATE3 = bytes.fromhex("82ad56cb")
BALANCE_OF = bytes.fromhex("70a08231")
GET_ETH_BALANCE = bytes.fromhex("4d2301cc")
GET_BLOCK_NUMBER = bytes.fromhex("42cbb15c")
GET_CURRENT_BLOCK_TIMESTAMP = bytes.fromhex("0f28c97d")


class GcClock:
    """Time spent in the garbage collector (``gc.callbacks``), to tell it from the rest."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    def reset(self) -> None:
        self.seconds, self.collections = 0.0, 0


GC = GcClock()


def settle(args: argparse.Namespace) -> None:
    """With ``--gc-freeze``: the heap built so far (streams open) is not rescanned by the
    collector, as a server could freeze its own once started."""
    if args.gc_freeze:
        gc.collect()
        gc.freeze()


def holder(n: int) -> str:
    return to_checksum_address(f"0x{0xBE7C:04x}{n:036x}")


class Counting:
    """A JSON-RPC proxy that counts ``eth_call``s (what the server sends upstream)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Counting:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None and self._runner is not None
        await self._session.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        payload: Any = await request.json()
        for item in payload if isinstance(payload, list) else [payload]:
            self.counts[item.get("method", "?")] += 1
        async with self._session.post(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        ) as upstream:
            return web.Response(
                status=upstream.status, body=await upstream.read(), content_type="application/json"
            )


def raw_payloads(
    addresses: list[str], tokens: list[str], multicall: str, size: int
) -> list[dict[str, Any]]:
    """The reader's ``aggregate3`` calls for ``addresses``: block fields first, chunked."""
    calls: list[tuple[str, bool, bytes]] = [
        (multicall, False, GET_BLOCK_NUMBER),
        (multicall, False, GET_CURRENT_BLOCK_TIMESTAMP),
    ]
    for address in addresses:
        argument = encode(["address"], [address])
        for token in tokens:
            calls.append((token, True, BALANCE_OF + argument))
        calls.append((multicall, True, GET_ETH_BALANCE + argument))
    chunks = [calls[i : i + size] for i in range(0, len(calls), size)]
    return [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "eth_call",
            "params": [
                {
                    "to": multicall,
                    "data": "0x" + (AGGREGATE3 + encode(["(address,bool,bytes)[]"], [c])).hex(),
                },
                "latest",
            ],
        }
        for i, c in enumerate(chunks)
    ]


async def raw_read(http: aiohttp.ClientSession, url: str, payloads: list[dict[str, Any]]) -> float:
    """Seconds for the payloads posted at once, every answer's bytes hex-decoded."""
    started = time.perf_counter()

    async def one(payload: dict[str, Any]) -> None:
        async with http.post(url, json=payload) as response:
            bytes.fromhex((await response.json())["result"][2:])

    await asyncio.gather(*(one(p) for p in payloads))
    return time.perf_counter() - started


def spread(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"median {statistics.median(ms):.1f} ms (min {ms[0]:.1f}, max {ms[-1]:.1f})"


class Arrivals:
    """Counts messages; ``all`` returns once ``expected`` more arrived (no task per stream)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()
        self.phases: list[tuple[float, float]] = []
        self.last = 0.0

    def one(self, message: bytes) -> None:
        self.count += 1
        if self.count == self.expected:
            self.last = time.perf_counter()
            self.done.set()

    async def all(self) -> float:
        """When the last of ``expected`` messages arrived."""
        await self.done.wait()
        self.done.clear()
        self.count = 0
        return self.last


class BareStreams:
    """The transport floor: a bare ``grpc.aio`` server whose every stream sends a prebuilt
    message (the service's own bytes) each time ``fire`` is called."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self._go: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.server = aio.server()
        handler = grpc.unary_stream_rpc_method_handler(self._watch)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Bare", {"Watch": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def fire(self) -> None:
        go, self._go = self._go, asyncio.get_running_loop().create_future()
        go.set_result(None)

    async def _watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield self.message  # the "initial" message: the stream is open
        while True:
            await self._go
            yield self.message


def ratio_line(name: str, samples: list[float], raws: list[float]) -> str:
    ratio = statistics.median(samples) / statistics.median(raws)
    return f"{name}: {spread(samples)}; {ratio:.1f}x the raw read"


async def rounds(
    name: str,
    count: int,
    fire: Callable[[int], Awaitable[float]],
    wait_all: Callable[[int], Awaitable[float]],
    raw: Callable[[], Awaitable[float]],
    raws: list[float],
    profile: cProfile.Profile | None = None,
) -> list[float]:
    """``count`` rounds of: ``fire`` (untimed set-up, then the timed start, which it
    returns), wait for every stream's message (``wait_all`` returns when the last one came),
    then one raw read (interleaved A/B)."""
    samples = []
    for round_ in range(1, count + 1):
        started = await fire(round_)
        GC.reset()
        if profile is not None:
            profile.enable()
        finished = await asyncio.wait_for(wait_all(round_), 120)
        samples.append(finished - started)
        if profile is not None:
            profile.disable()
        raws.append(await raw())
        print(
            f"  {name} round {round_}: {samples[-1] * 1000:.1f} ms"
            f" ({GC.collections} garbage collections: {GC.seconds * 1000:.1f} ms);"
            f" raw read {raws[-1] * 1000:.1f} ms"
        )
    return samples


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(AnvilNode(chain_id=POLYGON.chain_id))
        world = DemoWorld()
        network = await deploy_network(POLYGON, node.url)
        world.networks["polygon"] = network
        proxy = await stack.enter_async_context(Counting(node.url))
        wallets = [
            DemoWallet(f"wal_b{i}", f"cus_b{i}", "polygon", holder(i), {})
            for i in range(args.streams // args.per_wallet)
        ]
        settings = replace(
            demo_settings(
                world,
                listen="127.0.0.1:0",
                directory_path=workdir / "wallets.sqlite3",
                rpc_urls={"polygon": [proxy.url]},
                cache_ttl_seconds=3600,
            ),
            limits=LimitsSettings(
                requests_per_second=100_000, burst=100_000, max_streams=args.streams + 10
            ),
        )
        key = await prepare_directory(settings.directory_path, wallets, workdir)
        service = await stack.enter_async_context(open_service(settings))
        server, port, _ = create_server(service, settings.listen)
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        stub = balances_pb2_grpc.BalancesServiceStub(channel)
        follower = service.followers["polygon"]  # not started: ticked by hand below
        http = await stack.enter_async_context(aiohttp.ClientSession())
        payloads = raw_payloads(
            [w.address for w in wallets],
            list(network.tokens.values()),
            network.multicall3,
            settings.network("polygon").max_calls_per_batch,
        )

        async def raw() -> float:
            return await raw_read(http, node.url, payloads)

        await raw()  # warm the connection
        profile = cProfile.Profile() if args.profile else None
        raws: list[float] = []
        tick: list[asyncio.Future[Any]] = []

        async def new_block(round_: int) -> float:
            """Every wallet's native balance changes in one block; the follower is woken."""
            for w in wallets:
                await set_native_balance(node.url, w.address, 10**18 * round_ + 1)
            await mine(node.url)
            started = started_at[0] = time.perf_counter()
            tick[:] = [asyncio.ensure_future(ticked())]
            return started

        async def ticked() -> None:
            assert (await follower.tick()) is not None
            notified[0] = time.perf_counter()

        reader = service.readers["polygon"]
        read_snapshot = reader.snapshot

        async def timed_snapshot(*args: Any, **kwargs: Any) -> Any:
            snapshot = await read_snapshot(*args, **kwargs)
            read_done[0] = time.perf_counter()
            return snapshot

        reader.snapshot = timed_snapshot  # type: ignore[method-assign]
        started_at, read_done, notified = [0.0], [0.0], [0.0]

        # --- 1. the service without transport: use case, conversion, encoding ---------------
        watched = [wallets[i % len(wallets)] for i in range(args.streams)]
        print(
            f"{len(watched)} watches of {len(wallets)} wallets in process"
            " (BalanceWatches + conversion + encoding):"
        )
        arrived = Arrivals(len(watched))

        async def consume(wallet_id: str) -> None:
            async for update in service.watches.watch_wallet(DEFAULT_TENANT, wallet_id):
                arrived.one(wallet_watch_response(update).SerializeToString())

        proxy.counts.clear()
        started = time.perf_counter()
        consumers = [asyncio.ensure_future(consume(w.wallet_id)) for w in watched]
        await asyncio.wait_for(arrived.all(), 120)
        print(
            f"  subscribing: {(time.perf_counter() - started) * 1000:.0f} ms,"
            f" {proxy.counts['eth_call']} eth_calls"
        )
        await follower.tick()  # the follower's baseline of every address
        settle(args)

        async def all_arrived(round_: int) -> float:
            last = await arrived.all()
            await tick[0]
            arrived.phases.append((read_done[0] - started_at[0], notified[0] - started_at[0]))
            return last

        in_process = await rounds(
            "in process", args.rounds, new_block, all_arrived, raw, raws, profile
        )
        read_ms = statistics.median(a for a, _ in arrived.phases) * 1000
        notified_ms = statistics.median(b for _, b in arrived.phases) * 1000
        last_ms = statistics.median(in_process) * 1000
        print(
            f"  phases (medians from the block): snapshot read {read_ms:.1f} ms,"
            f" last message {last_ms:.1f} ms, every listener done {notified_ms:.1f} ms"
        )
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)

        # --- 2. the service over gRPC (client in this process) --------------------------------
        print(f"{len(watched)} WatchWalletBalance streams over gRPC:")
        proxy.counts.clear()
        started = time.perf_counter()
        calls = [
            stub.WatchWalletBalance(
                balances_pb2.WatchWalletBalanceRequest(wallet_id=w.wallet_id),
                metadata=(("x-api-key", key),),
            )
            for w in watched
        ]
        firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 120)
        assert all(m.initial for m in firsts)
        print(
            f"  subscribing: {(time.perf_counter() - started) * 1000:.0f} ms,"
            f" {proxy.counts['eth_call']} eth_calls"
        )
        sample: list[Any] = []
        settle(args)

        async def all_read(round_: int) -> float:
            messages = await asyncio.gather(*(c.read() for c in calls))
            last = time.perf_counter()
            assert all(not m.initial and m.block_number for m in messages)
            await tick[0]
            sample[:] = messages[:1]
            return last

        over_grpc = await rounds("gRPC", args.rounds, new_block, all_read, raw, raws)
        for call in calls:
            call.cancel()

        # --- 3. the transport floor: a bare grpc.aio server, the same bytes -----------------
        print(f"{len(watched)} streams of a bare grpc.aio server sending prebuilt bytes:")
        bare = BareStreams(sample[0].SerializeToString())
        await bare.server.start()
        stack.push_async_callback(bare.server.stop, None)
        bare_channel = aio.insecure_channel(f"127.0.0.1:{bare.port}")
        stack.push_async_callback(bare_channel.close)
        method = bare_channel.unary_stream(
            "/bench.Bare/Watch",
            request_serializer=None,
            response_deserializer=balances_pb2.WatchWalletBalanceResponse.FromString,
        )
        bare_calls = [method(b"") for _ in watched]
        await asyncio.wait_for(asyncio.gather(*(c.read() for c in bare_calls)), 120)
        settle(args)

        async def fire_bare(round_: int) -> float:
            started = time.perf_counter()
            bare.fire()
            return started

        async def all_bare(round_: int) -> float:
            await asyncio.gather(*(c.read() for c in bare_calls))
            return time.perf_counter()

        floor = await rounds("bare", args.rounds, fire_bare, all_bare, raw, raws)
        for call in bare_calls:
            call.cancel()

        print(f"raw read ({len(payloads)} aggregate3 eth_calls at once): {spread(raws)}")
        print(ratio_line("block -> last message, in process, no transport", in_process, raws))
        print(ratio_line("block -> last message received over gRPC", over_grpc, raws))
        print(ratio_line("bare grpc.aio: fire -> last message received", floor, raws))
        service_part = statistics.median(over_grpc) - statistics.median(floor)
        print(
            f"gRPC minus the bare transport floor: {service_part * 1000:.1f} ms,"
            f" {service_part / statistics.median(raws):.1f}x the raw read; {os.cpu_count()} CPUs"
        )
        if profile is not None:
            profile.dump_stats(args.profile)
            print(f"profile of the in-process rounds: {args.profile}")


async def prepare_directory(path: Path, wallets: list[DemoWallet], workdir: Path) -> str:
    wallet_file = workdir / "wallets.json"
    write_wallet_file(wallet_file, wallets)
    stores = await open_sqlite_stores(path)
    key = new_api_key()
    try:
        await import_wallet_file(stores.wallets, wallet_file, DEFAULT_TENANT, ["polygon"])
        await stores.api_keys.add_key(key.key_id, DEFAULT_TENANT, key.digest)
    finally:
        await stores.aclose()
    return key.plaintext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--per-wallet", type=int, default=1, help="streams watching each wallet (1: all distinct)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the in-process rounds")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() once each phase's streams are open"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
