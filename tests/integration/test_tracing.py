"""Traces: one REST request, its gRPC call and its upstream JSON-RPC calls are one trace.

In process (an in-memory exporter): ``serve`` with REST calling its handlers
directly, and the shim alone (the sidecar's way) calling a server over a real
channel, where the context can only cross in ``traceparent`` metadata.  Health's
``Watch`` (a handler that streams with ``context.write()``) works with tracing
on, and so does a traced handler of that kind.  No span names a URL, a key or
a wallet address.  Then a real ``balances serve`` exporting over OTLP/HTTP to a
receiver stood up here, decoded with opentelemetry-proto.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from balances.v1 import balances_pb2
from service import children, tracing
from service.api.services import API_SERVICES
from service.api.tracing_interceptor import TracingInterceptor
from service.devchain.world import DemoWorld
from service.gateway.limits import RestLimits
from service.gateway.serve import start_gateway
from service.run import ServingPorts, serve
from service.settings.model import RestSettings, TracingSettings
from tests.support.cli import BALANCES
from tests.support.processes import drain, processes_in_group, read_stderr_until_serving
from tests.support.rpc_proxy import CountingProxy
from tests.support.stack import running_stack, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WALLET = "wal_alice_polygon"
ROUTE = "GET /v1/wallets/{wallet_id}/balance"
SERVICE = "balances.v1.BalancesService"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
REST_LINE = "serving REST on port "


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, every finished span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


def one_request_trace(found: Sequence[ReadableSpan], trace_id: int | None = None) -> dict[str, Any]:
    """The REST span of the trace (the given one, else the only one with a REST span), its
    gRPC span and its upstream spans, each link checked."""
    rest = [
        s for s in found if s.name == ROUTE and (trace_id is None or s.context.trace_id == trace_id)
    ]
    assert len(rest) == 1, [s.name for s in found]
    (http,) = rest
    assert http.kind is SpanKind.SERVER
    assert http.attributes is not None and http.attributes["http.response.status_code"] == 200
    same_trace = [s for s in found if s.context.trace_id == http.context.trace_id]
    (call,) = [s for s in same_trace if s.name.startswith(f"{SERVICE}/")]
    assert call.kind is SpanKind.SERVER
    assert call.parent is not None and call.parent.span_id == http.context.span_id
    assert call.attributes is not None and call.attributes["rpc.grpc.status_code"] == 0
    upstream = [s for s in same_trace if s.name.startswith("upstream ")]
    assert upstream, [s.name for s in same_trace]
    for span in upstream:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == call.context.span_id
    # Nothing else in the trace: no stray span, no second call.
    assert len(same_trace) == 2 + len(upstream), [s.name for s in same_trace]
    return {"http": http, "call": call, "upstream": upstream}


def span_text(found: Sequence[ReadableSpan]) -> str:
    """Everything a backend would show of ``found``: names, attributes, events, statuses."""
    return "\n".join(span.to_json() for span in found)


def assert_no_secret(text: str, world: DemoWorld, api_key: str) -> None:
    assert "SECRET" not in text  # the providers' URL paths stand for their keys
    assert api_key not in text
    assert api_key.partition("_")[2][:12] not in text
    for wallet in world.wallets:
        assert wallet.address.lower() not in text.lower()
        assert wallet.address.lower()[2:] not in text.lower()


async def get_balance(base: str, api_key: str, wallet: str, **headers: str) -> Any:
    async with aiohttp.ClientSession() as http:
        url = f"{base}/v1/wallets/{wallet}/balance"
        async with http.get(url, headers={"X-API-Key": api_key, **headers}) as reply:
            assert reply.status == 200, await reply.text()
            return await reply.json()


@asynccontextmanager
async def proxies_for(world: DemoWorld) -> AsyncIterator[dict[str, CountingProxy]]:
    async with AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(CountingProxy(network.rpc_url))
            for name, network in world.networks.items()
        }


async def test_rest_grpc_and_upstream_are_one_trace_in_process(
    world: DemoWorld, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    # A provider first in line that fails once the service runs: its failure is a span too.
    async with proxies_for(world) as failing, proxies_for(world) as proxies:
        config = await write_stack_config(
            world,
            tmp_path,
            {name: [failing[name].url, proxy.url] for name, proxy in proxies.items()},
            rest=RestSettings(listen="127.0.0.1:0"),
        )
        stop = asyncio.Event()
        ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(config.settings, on_ready=ready.set_result, stop=stop))
        try:
            async with asyncio.timeout(30):
                await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
            base = f"http://127.0.0.1:{ready.result().rest}"
            spans.clear()  # start-up's reads are no request's
            for proxy in proxies.values():
                proxy.reset()
            for proxy in failing.values():
                proxy.fail_with = 500
            body = await get_balance(base, config.api_key, WALLET)
            assert body["walletId"] == WALLET
            assert proxies["polygon"].counts["eth_call"] >= 1  # a cold read: upstream calls
            first = one_request_trace(spans.get_finished_spans())
            # The failing provider was asked first: its failure is a span of the same call,
            # named by position, its error by type only.
            failed = [
                s
                for s in first["upstream"]
                if s.attributes is not None and s.attributes["balances.provider"] == 1
            ]
            assert failed and all(not s.status.is_ok for s in failed)
            assert all(s.status.description == "ProviderFault" for s in failed)
            answered = [s for s in first["upstream"] if s.status.is_ok]
            assert answered and all(
                s.attributes is not None
                and s.attributes["balances.provider"] == 2
                and s.attributes["balances.network"] == "polygon"
                for s in answered
            )
            assert {s.attributes["rpc.method"] for s in answered if s.attributes} >= {"eth_call"}
            # A client's own traceparent: the request is part of the client's trace.
            spans.clear()
            await get_balance(
                base, config.api_key, "wal_bob_polygon", traceparent=CLIENT_TRACEPARENT
            )
            joined = one_request_trace(spans.get_finished_spans(), int(CLIENT_TRACE, 16))
            assert joined["http"].parent is not None and joined["http"].parent.is_remote
            # No span of either request names a URL, a key or a wallet address.
            assert_no_secret(
                span_text([first["http"], first["call"], *first["upstream"]])
                + span_text([joined["http"], joined["call"], *joined["upstream"]]),
                world,
                config.api_key,
            )
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task


async def test_the_sidecar_channel_carries_the_trace_in_metadata(
    world: DemoWorld, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with running_stack(world, tmp_path) as stack:
        gateway = await start_gateway(stack.target, "127.0.0.1:0", API_SERVICES, RestLimits())
        try:
            spans.clear()
            await get_balance(f"http://127.0.0.1:{gateway.port}", stack.api_key, WALLET)
            found = spans.get_finished_spans()
            trace = one_request_trace(found)
            # The server's span got its parent over the wire: from the metadata, not a
            # context shared in this process.
            assert trace["call"].parent is not None and trace["call"].parent.is_remote
            assert_no_secret(span_text(found), world, stack.api_key)
        finally:
            await gateway.aclose()


async def test_health_watch_works_with_tracing_on(
    world: DemoWorld, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with running_stack(world, tmp_path) as stack:
        health = health_pb2_grpc.HealthStub(stack.channel)
        await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        try:
            async with asyncio.timeout(10):
                first = await call.read()
            assert first.status in (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.SERVICE_UNKNOWN,
            )
        finally:
            call.cancel()
        # The balances stream (an async generator) is traced and works.
        watch = stack.stub.WatchWalletBalance(
            balances_pb2.WatchWalletBalanceRequest(wallet_id=WALLET), timeout=10
        )
        try:
            async with asyncio.timeout(10):
                update = await watch.read()
            assert update is not aio.EOF
        finally:
            watch.cancel()
        await asyncio.sleep(0.1)  # the cancelled stream's span ends as its handler unwinds
    names = [s.name for s in spans.get_finished_spans()]
    assert f"{SERVICE}/WatchWalletBalance" in names
    assert not [n for n in names if "Health" in n]  # probes make no traces


async def test_a_traced_handler_that_streams_with_context_write(
    spans: InMemorySpanExporter,
) -> None:
    """The handler kind opentelemetry-instrumentation-grpc's aio interceptor breaks."""

    async def countdown(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> None:
        for n in range(int(request), 0, -1):
            await context.write(str(n).encode())

    async def fail(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> None:
        await context.write(b"1")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")

    handlers = {
        "Countdown": grpc.unary_stream_rpc_method_handler(countdown),
        "Fail": grpc.unary_stream_rpc_method_handler(fail),
    }
    server = aio.server(interceptors=[TracingInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Writer", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            countdown_call = channel.unary_stream("/t.Writer/Countdown")(b"3", timeout=5)
            assert [m async for m in countdown_call] == [b"3", b"2", b"1"]
            fail_call = channel.unary_stream("/t.Writer/Fail")(b"", timeout=5)
            with pytest.raises(aio.AioRpcError) as failed:
                _ = [m async for m in fail_call]
            assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await server.stop(None)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    ok, bad = by_name["t.Writer/Countdown"], by_name["t.Writer/Fail"]
    assert ok.status.is_ok and ok.attributes is not None
    assert ok.attributes["rpc.grpc.status_code"] == 0
    assert bad.attributes is not None
    assert bad.attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert not bad.status.is_ok


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: keeps each export request's protobuf body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        self.bodies.append(await request.read())
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received."""
        found = []
        for body in self.bodies:
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    found += [(resource, span) for span in scope.spans]
        return found


async def test_balances_serve_exports_one_trace_over_otlp_http(
    world: DemoWorld, tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    process = None
    lines: list[str] = []
    try:
        async with proxies_for(world) as proxies:
            config = await write_stack_config(
                world,
                tmp_path,
                {name: [proxy.url] for name, proxy in proxies.items()},
                rest=RestSettings(listen="127.0.0.1:0"),
                tracing=TracingSettings(
                    enabled=True, otlp_endpoint=endpoint, service_name="balances-under-test"
                ),
            )
            process = await children.create_subprocess_exec(
                str(BALANCES),
                "serve",
                "--config",
                str(config.path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100"},  # export within 0.1 s
            )
            assert process.stderr is not None
            await read_stderr_until_serving(process.stderr, lines)
            drained = asyncio.create_task(drain(process.stderr, lines))
            rest_port = next(
                int(line.rpartition(REST_LINE)[2].split()[0]) for line in lines if REST_LINE in line
            )
            await get_balance(
                f"http://127.0.0.1:{rest_port}",
                config.api_key,
                WALLET,
                traceparent=CLIENT_TRACEPARENT,
            )
            # Stopped: whatever was not yet sent is flushed on the way out.
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                assert await process.wait() == 0, "\n".join(lines)
                await drained
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if process is not None:
            for pid in processes_in_group(process.pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await runner.cleanup()
    assert receiver.bodies, "\n".join(lines)
    received = receiver.spans()
    ours = [span for _resource, span in received if span.trace_id.hex() == CLIENT_TRACE]
    by_name: dict[str, list[Any]] = {}
    for span in ours:
        by_name.setdefault(span.name, []).append(span)
    (http,) = by_name[ROUTE]
    (call,) = [s for name, group in by_name.items() if name.startswith(SERVICE) for s in group]
    upstream = [s for name, group in by_name.items() if name.startswith("upstream") for s in group]
    assert http.parent_span_id.hex() == CLIENT_TRACEPARENT.split("-")[2]
    assert call.parent_span_id == http.span_id
    assert upstream and all(s.parent_span_id == call.span_id for s in upstream)
    assert {resource["service.name"] for resource, _span in received} == {"balances-under-test"}
    # What left the process holds no key, provider URL or wallet address.
    assert_no_secret(
        "\n".join(str(ExportTraceServiceRequest.FromString(b)) for b in receiver.bodies),
        world,
        config.api_key,
    )
    assert not [line for line in lines if "Traceback" in line or "ERROR" in line], lines
