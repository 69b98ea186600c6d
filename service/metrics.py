"""The Prometheus metrics of a server: their names, labels and the ``/metrics`` listener.

Every series is defined here, once, so docs/operations.md and deploy/alerts.yaml
have one list to follow.  Label values are chosen by the operator or by the code,
never by a caller: a network name, a provider's position (``"1"`` is the first of
``rpc_urls``, never its URL), a JSON-RPC method, a route template (never the raw
path), a tenant name (never a key).  No label ever holds a URL, a key or an address.

Who writes what:

* transport and adapters observe directly, on pre-bound label children
  (``service.api.metrics_interceptor``, ``service.gateway.metrics_middleware``,
  ``service.chain.providers``, ``service.metrics_sources``);
* the use cases import nothing of this: they keep plain counts and state (a
  follower's last block, the delivery's attempts), and ``service.metrics_sampler``
  copies them here before each scrape (one process) or every second (workers).

``balances serve --workers N``: prometheus_client's multiprocess mode.  The
supervisor makes a fresh directory, names it to each worker in
``PROMETHEUS_MULTIPROC_DIR`` (read when prometheus_client is first imported), serves
the sum over the workers' files on ``[metrics] listen`` and removes the directory
when it stops.  Each gauge says how the workers' values combine
(``multiprocess_mode``); one process ignores it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.errors import CannotListen

__all__ = [
    "MULTIPROC_ENV_VAR",
    "build_revision",
    "enable",
    "enabled",
    "in_worker",
    "serve_metrics",
    "supervisor_registry",
]

log = logging.getLogger(__name__)

MULTIPROC_ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
REVISION_ENV_VAR = "BALANCES_GIT_REVISION"

# Seconds: a warm read is ~0.1-1 ms, a cold one tens of ms, a slow provider seconds.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_UPSTREAM = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# --- gRPC (service.api.metrics_interceptor) ----------------------------------------------
GRPC_REQUESTS = Counter(
    "balances_grpc_requests",
    "gRPC calls finished, by service, method and status code (calls from this process's"
    " REST shim are counted as REST only).",
    ("service", "method", "code"),
)
GRPC_SECONDS = Histogram(
    "balances_grpc_request_seconds",
    "Time to answer a unary gRPC call, status code included.",
    ("service", "method"),
    buckets=_FAST,
)
GRPC_IN_FLIGHT = Gauge(
    "balances_grpc_in_flight",
    "gRPC calls running now (watch streams included).",
    ("service", "method"),
    multiprocess_mode="livesum",
)
# --- REST (service.gateway.metrics_middleware) -------------------------------------------
REST_REQUESTS = Counter(
    "balances_rest_requests",
    "REST requests answered, by route template, HTTP method and status.",
    ("route", "method", "status"),
)
REST_SECONDS = Histogram(
    "balances_rest_request_seconds",
    "Time to answer a REST request (watch streams excluded).",
    ("route", "method"),
    buckets=_FAST,
)
# --- Tenancy (service.api.metrics_interceptor: gRPC and REST alike) ----------------------
TENANT_REQUESTS = Counter(
    "balances_tenant_requests",
    "Authenticated calls (gRPC or REST), by tenant name.",
    ("tenant",),
)
TENANT_RATE_LIMITED = Counter(
    "balances_tenant_rate_limited",
    "Calls refused by a rate limit or quota (RESOURCE_EXHAUSTED, HTTP 429), by tenant.",
    ("tenant",),
)
# --- Upstream (service.chain.providers; the sampler for state) ---------------------------
UPSTREAM_REQUESTS = Counter(
    "balances_upstream_requests",
    "JSON-RPC requests to providers, by network, provider position, method and outcome"
    " (ok, error: answered with a JSON-RPC error, fault: failed, cancelled: timed out or"
    " lost a hedge).",
    ("network", "provider", "method", "outcome"),
)
UPSTREAM_SECONDS = Histogram(
    "balances_upstream_request_seconds",
    "Time for one JSON-RPC request (or batch) to one provider.",
    ("network", "provider", "method"),
    buckets=_UPSTREAM,
)
UPSTREAM_HEDGES = Counter(
    "balances_upstream_hedges",
    "Reads also sent to a second provider because the first was slow.",
    ("network",),
)
PROVIDER_RESTING = Gauge(
    "balances_provider_resting",
    "1 while a provider rests after faults (the breaker is open; a probe follows).",
    ("network", "provider"),
    multiprocess_mode="livemax",
)
PROVIDER_LAG = Gauge(
    "balances_provider_lag_blocks",
    "Blocks a provider's last reported head is behind the best head seen on its network.",
    ("network", "provider"),
    multiprocess_mode="livemax",
)
CHAIN_HEAD = Gauge(
    "balances_chain_head_block",
    "The best head block any provider of the network reported.",
    ("network",),
    multiprocess_mode="livemax",
)
NETWORK_READABLE = Gauge(
    "balances_network_readable",
    "1 while the network's reads succeed (its gRPC health is SERVING), else 0.",
    ("network",),
    multiprocess_mode="livemin",
)
# --- Cache and snapshots (the sampler; service.metrics_sources) --------------------------
CACHE_LOOKUPS = Counter(
    "balances_cache_lookups",
    "Snapshot lookups by result: hit (cached), miss (read upstream), coalesced (joined a"
    " read already running for the same key).",
    ("network", "result"),
)
STALE_ANSWERS = Counter(
    "balances_stale_answers",
    "Answers served stale (the last good read) because every provider failed.",
    ("network",),
)
CACHE_EVICTIONS = Counter(
    "balances_cache_evictions",
    "Snapshots dropped from the in-memory cache: expired or over max_entries (capacity).",
    ("reason",),
)
CACHE_ENTRIES = Gauge(
    "balances_cache_entries",
    "Snapshots held in the in-memory cache (absent with the Redis cache).",
    multiprocess_mode="livesum",
)
SNAPSHOT_READS = Counter(
    "balances_snapshot_reads",
    "Snapshots read upstream (one block, many addresses), by outcome (ok, failed).",
    ("network", "outcome"),
)
SNAPSHOT_ADDRESSES = Histogram(
    "balances_snapshot_addresses",
    "Addresses in one snapshot read upstream.",
    ("network",),
    buckets=_SIZES,
)
SNAPSHOT_SECONDS = Histogram(
    "balances_snapshot_read_seconds",
    "Time to read one snapshot upstream (failover and hedging included).",
    ("network",),
    buckets=_UPSTREAM,
)
# --- Monitoring: followers, streams, webhooks, leadership (the sampler) ------------------
FOLLOWER_HEAD = Gauge(
    "balances_follower_head_block",
    "The last block the network's follower processed (set by the leading process).",
    ("network",),
    multiprocess_mode="livemostrecent",
)
FOLLOWER_LAG = Gauge(
    "balances_follower_lag_blocks",
    "Blocks between the chain head (less the configured confirmations) and the follower.",
    ("network",),
    multiprocess_mode="livemostrecent",
)
FOLLOWER_BLOCKS = Counter(
    "balances_follower_blocks", "Blocks the follower processed.", ("network",)
)
FOLLOWER_CHANGES = Counter(
    "balances_follower_changes",
    "Balance changes the follower found (one per wallet and currency).",
    ("network",),
)
WATCH_STREAMS = Gauge(
    "balances_watch_streams",
    "Open watch streams (gRPC and REST).",
    multiprocess_mode="livesum",
)
WEBHOOK_PENDING = Gauge(
    "balances_webhook_outbox_pending",
    "Webhook events waiting to be delivered (set by the process leading delivery).",
    multiprocess_mode="livemostrecent",
)
WEBHOOK_OLDEST = Gauge(
    "balances_webhook_outbox_oldest_seconds",
    "Age of the oldest pending webhook event (0 when none).",
    multiprocess_mode="livemostrecent",
)
WEBHOOK_ATTEMPTS = Counter(
    "balances_webhook_attempts", "Webhook deliveries tried, by outcome.", ("outcome",)
)
WEBHOOK_DEAD = Counter(
    "balances_webhook_dead",
    "Webhook events given up after the last retry (marked failed).",
)
LEADER = Gauge(
    "balances_leader",
    "1 while this process leads the lease (a network's follower, webhook delivery).",
    ("lease",),
    multiprocess_mode="livesum",
)


_enabled = False  # [metrics] listen is set: the transport adds its interceptor, middleware


def enable() -> None:
    """Metrics are on in this process (``[metrics] listen``): set before serving starts."""
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


def in_worker() -> bool:
    """A ``serve --workers`` worker: metrics go to the supervisor's directory."""
    return bool(os.environ.get(MULTIPROC_ENV_VAR))


def build_revision() -> str:
    """The git revision this runs: ``BALANCES_GIT_REVISION`` (an image sets it at build),
    else a source checkout's ``.git`` read as files (no git binary), else ``unknown``."""
    given = os.environ.get(REVISION_ENV_VAR, "").strip()
    if given:
        return given[:40]
    git = Path(__file__).resolve().parent.parent / ".git"
    with contextlib.suppress(OSError, ValueError):
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:40]
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()[:40]
        for line in (git / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha[:40]
    return "unknown"


class BuildInfo:
    """``balances_build_info{version, revision} 1``: a collector, so it works in every mode."""

    def __init__(self) -> None:
        try:
            self.version = importlib.metadata.version("balances-service")
        except importlib.metadata.PackageNotFoundError:
            self.version = "unknown"
        self.revision = build_revision()

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "balances_build_info",
            "Always 1: the running version and git revision in its labels.",
            labels=("version", "revision"),
        )
        info.add_metric((self.version, self.revision), 1.0)
        yield info


_BUILD_INFO = BuildInfo()
REGISTRY.register(_BUILD_INFO)


def supervisor_registry(directory: Path) -> CollectorRegistry:
    """The workers' metrics summed from ``directory``, and the build info."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(_BUILD_INFO)
    return registry


@contextlib.asynccontextmanager
async def serve_metrics(
    listen: str,
    registry: CollectorRegistry = REGISTRY,
    *,
    before_scrape: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[int]:
    """``GET /metrics`` on ``listen`` (plain HTTP) until the block ends; the bound port.

    ``before_scrape`` brings the use cases' counts and state up to date first.
    """

    async def metrics(_request: web.Request) -> web.Response:
        if before_scrape is not None:
            await before_scrape()
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotListen(listen) from exc
    try:
        bound = int(runner.addresses[0][1])
        log.info("serving metrics on port %d (GET /metrics)", bound)
        yield bound
    finally:
        await runner.cleanup()
