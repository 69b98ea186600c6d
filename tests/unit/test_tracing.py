"""The ``[tracing]`` settings and the tracing module's own rules (no server here)."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.errors import ConfigError
from service.settings import parse_settings
from service.settings.model import TracingSettings
from service.settings.render import render_settings

SECRET = "SECRET-COLLECTOR-TOKEN"
BASE: dict[str, Any] = {
    "networks": [
        {
            "name": "ethereum",
            "chain_id": 1,
            "rpc_urls": ["https://node.example/v3/key"],
            "tokens": [{"symbol": "ETH", "native": True, "decimals": 18, "price": {"peg": "1"}}],
        }
    ],
}
ENDPOINT = "http://127.0.0.1:4318/v1/traces"


def with_tracing(**values: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["tracing"] = values
    return doc


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    settings = parse_settings(BASE, base_dir=tmp_path)
    assert settings.tracing == TracingSettings()
    assert not settings.tracing.enabled and settings.tracing.otlp_endpoint is None
    assert (settings.tracing.service_name, settings.tracing.sample_ratio) == ("balances", 1.0)


def test_tracing_table_parses_and_renders_back(tmp_path: Path) -> None:
    doc = with_tracing(enabled=True, otlp_endpoint=ENDPOINT, service_name="bal-eu", sample_ratio=0)
    settings = parse_settings(doc, base_dir=tmp_path)
    assert settings.tracing == TracingSettings(True, ENDPOINT, "bal-eu", 0.0)
    assert isinstance(settings.tracing.sample_ratio, float)
    rendered = tomllib.loads(render_settings(settings))
    assert parse_settings(rendered, base_dir=tmp_path).tracing == settings.tracing
    # An endpoint kept while tracing is switched off is fine.
    kept = parse_settings(with_tracing(otlp_endpoint=ENDPOINT), base_dir=tmp_path)
    assert not kept.tracing.enabled


@pytest.mark.parametrize(
    ("values", "key", "reason"),
    [
        ({"enabled": "yes", "otlp_endpoint": ENDPOINT}, "tracing.enabled", "boolean"),
        ({"enabled": True}, "tracing.otlp_endpoint", "needed when enabled"),
        ({"otlp_endpoint": "ftp://collector/v1/traces"}, "tracing.otlp_endpoint", "http"),
        ({"otlp_endpoint": "collector:4318"}, "tracing.otlp_endpoint", "http"),
        ({"otlp_endpoint": 4318}, "tracing.otlp_endpoint", "string"),
        (
            {"otlp_endpoint": f"https://user:{SECRET}@collector/v1/traces"},
            "tracing.otlp_endpoint",
            "credentials",
        ),
        ({"sample_ratio": 1.5}, "tracing.sample_ratio", "from 0 to 1"),
        ({"sample_ratio": -0.1}, "tracing.sample_ratio", "from 0 to 1"),
        ({"sample_ratio": float("nan")}, "tracing.sample_ratio", "from 0 to 1"),
        ({"sample_ratio": True}, "tracing.sample_ratio", "from 0 to 1"),
        ({"sample_ratio": "0.5"}, "tracing.sample_ratio", "from 0 to 1"),
        ({"service_name": ""}, "tracing.service_name", "1-128 printable"),
        ({"service_name": "a\nb"}, "tracing.service_name", "1-128 printable"),
        ({"endpoint": ENDPOINT}, "tracing.endpoint", "unknown"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_tracing_settings_name_the_key(
    tmp_path: Path, values: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(with_tracing(**values), base_dir=tmp_path)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


def test_off_nothing_is_traced_or_propagated() -> None:
    assert not tracing.enabled()
    with tracing.upstream_span("ethereum", "eth_call", 1) as span:
        assert span is None
    metadata: list[tuple[str, str]] = []
    tracing.inject_metadata(metadata, {})
    assert metadata == []
    # A caller's own, well-formed traceparent is passed on; anything else is not.
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    tracing.inject_metadata(metadata, {"traceparent": given})
    assert metadata == [("traceparent", given)]
    for bad in ("00-xyz-00f067aa0ba902b7-01", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"):
        dropped: list[tuple[str, str]] = []
        tracing.inject_metadata(dropped, {"traceparent": bad})
        assert dropped == []


def test_upstream_spans_only_inside_a_request(spans: InMemorySpanExporter) -> None:
    # A background read (no span around it) starts no trace of its own.
    with tracing.upstream_span("ethereum", "eth_blockNumber", 1):
        pass
    assert spans.get_finished_spans() == ()
    with tracing.tracer().start_as_current_span("request") as request:
        with tracing.upstream_span("ethereum", "eth_call", 2):
            pass
        with pytest.raises(ValueError), tracing.upstream_span("ethereum", "eth_call", 1, 3):
            raise ValueError(f"https://node.example/v3/{SECRET}")
    ok, failed, parent = spans.get_finished_spans()
    assert parent.context.span_id == request.get_span_context().span_id
    assert ok.parent is not None and ok.parent.span_id == parent.context.span_id
    assert ok.name == "upstream eth_call" and ok.status.is_ok
    assert dict(ok.attributes or {}) == {
        "rpc.system": "jsonrpc",
        "rpc.method": "eth_call",
        "balances.network": "ethereum",
        "balances.provider": 2,
    }
    assert failed.name == "upstream batch"
    assert (failed.attributes or {})["balances.batch_size"] == 3
    assert not failed.status.is_ok and failed.status.description == "ValueError"
    assert failed.events == ()  # no exception event: its text may quote a URL
    assert SECRET not in failed.to_json()


def test_metadata_carries_the_current_span(spans: InMemorySpanExporter) -> None:
    with tracing.tracer().start_as_current_span("request") as request:
        metadata: list[tuple[str, str]] = [("x-request-id", "r1")]
        # Tracing here: the current span is the parent, not whatever the client said.
        tracing.inject_metadata(
            metadata, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        )
    keys = [key for key, _ in metadata]
    assert keys == ["x-request-id", "traceparent"]
    assert "1" * 32 not in metadata[1][1]
    context = tracing.extract_context(dict(metadata))
    assert context is not None
    with tracing.tracer().start_as_current_span("call", context=context) as call:
        pass
    assert call.get_span_context().trace_id == request.get_span_context().trace_id
    assert tracing.extract_context({"x-request-id": "r1"}) is None


def test_tracing_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "BALANCES_TRACING__ENABLED": "true",
        "BALANCES_TRACING__OTLP_ENDPOINT": ENDPOINT,
        "BALANCES_TRACING__SAMPLE_RATIO": "0.25",
    }
    settings = parse_settings(BASE, base_dir=tmp_path, environ=environ)
    assert settings.tracing == TracingSettings(True, ENDPOINT, "balances", 0.25)
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            BASE, base_dir=tmp_path, environ={**environ, "BALANCES_TRACING__SAMPLE_RATIO": "2"}
        )
    assert "BALANCES_TRACING__SAMPLE_RATIO" in str(caught.value)


def test_a_stopped_tracer_still_serves_calls_in_flight() -> None:
    """The interceptor and the middleware outlive ``stop_tracing`` by a draining call."""
    with tracing.tracer().start_as_current_span("late") as span:
        assert not span.is_recording()
