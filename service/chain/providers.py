"""The JSON-RPC providers of one network: every outcome classified, ranked, rested, hedged.

Other people's nodes rate-limit, stall, lag and return garbage.  Here:

* **Classification.**  A transport error, a timeout, HTTP 429 or any other
  non-200, a body that is not JSON, and a JSON-RPC error that means "this
  provider cannot answer now" (rate limits such as ``-32005``, pruned-state
  errors such as "header not found" or "missing trie node", internal errors)
  are a ``ProviderFault``: the next provider is asked.  A pruned-state error does
  not rest the provider (it is up; it lacks that old state), and when every
  provider gave one the read's ``ChainUnavailable`` says ``state_missing`` (an
  archive node is needed).  A revert or an
  invalid-params error is an answer (``RpcError``) and is not retried: every
  provider would give it.  An operation that finds a result malformed raises
  ``ProviderFault`` itself.
* **Ranking.**  Providers that are not resting are tried in configured order,
  except that one much slower than the fastest (its latency, a moving average,
  above twice the fastest plus 50 ms) goes after the others.  A latency older
  than ``recovery_seconds`` no longer counts, so a demoted provider is asked
  first again after that long.  Configured order wins otherwise, so traffic
  returns to the first URL once it is healthy.
* **Resting.**  A fault rests a provider for 0.5 s, doubling with each further
  consecutive fault up to ``recovery_seconds``; HTTP 429/503 with
  ``Retry-After`` rests it that long (capped).  When the rest is over, one
  request at a time probes it; a success ends the fault streak.  So a
  recovered provider has traffic back within ``recovery_seconds``.  Resting
  providers are still asked after every other one has failed (soonest rest end
  first), except one that asked to wait with ``Retry-After``: better to ask
  early than to fail.
* **Hedging.**  When the provider asked has not answered within the hedge
  delay (three times its average latency, at least ``hedge_floor_seconds``),
  the same operation is sent to the next provider too; the first good answer
  wins and the others are cancelled.  ``hedges`` counts them.  A provider
  still silent past its hedge delay when another answered (or the deadline
  passed) has a fault: a stalled provider rests and is probed like any other.
* **Lag.**  Operations report the head they saw (``Endpoint.note_head``); a
  provider more than ``max_lag_blocks`` behind the best head seen on the
  network is a fault.
* **Cross-checks.**  ``run(..., exclude=...)`` asks the others than some
  providers (the chosen provider's answer checked by others, see
  ``service.chain.cross_check``), ``demote`` rests a provider found wrong, and
  ``disagreements`` counts the checks that found providers disagreeing.  A
  ``ProviderFault`` with ``rest=False`` moves a read on without resting the
  provider (it answered; its answer could not be confirmed).

Everything runs inside the caller's deadline.  Messages name the network and a
provider by position, never a URL (URLs often carry provider keys).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp

from service import metrics
from service.errors import ChainUnavailable
from service.redact import redact_url
from service.tracing import upstream_span

__all__ = ["Endpoint", "HexData", "ProviderFault", "ProviderPolicy", "ProviderPool", "RpcError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BODY_BYTES = 64 << 20  # a multicall answer for thousands of holders is a few MB
_JSON = {"Content-Type": "application/json"}
_SPLICE = "\0hex\0"  # stands in for a HexData while the rest of the body is dumped
_SPLICE_JSON = json.dumps(_SPLICE)
_FIRST_REST = 0.5
_EWMA = 0.3  # weight of a new latency sample
_SLOW_FACTOR, _SLOW_MARGIN = 2.0, 0.05
_HEDGE_FACTOR = 3.0
# JSON-RPC error codes that say "not now, not here" rather than "no".
_FAULT_CODES = frozenset({-32005, -32603, -32601, -32002, -32001, 429})
# -32000 is a catch-all (and some nodes say -32602 for a block they lack): these texts
# mark a provider's own trouble.
_FAULT_TEXTS = (
    "header not found",
    "unknown block",  # a node behind the requested block: another may have it
    "block not found",
    "blockoutofrange",  # anvil: -32602 "BlockOutOfRangeError: block height is ..."
    "block out of range",
    "missing trie node",
    "state not available",
    "historical state",  # geth: "historical state 0x... is not available"
    "pruned",
    "rate limit",
    "too many requests",
    "limit exceeded",
    "capacity",
    "timeout",
    "timed out",
    "busy",
    "unavailable",
    "not synced",
    "syncing",
    "internal error",
)
# Texts of a node that no longer holds an old block's state (a non-archive node).
_STATE_TEXTS = (
    "missing trie node",
    "state not available",
    "historical state",
    "pruned",
    "pruning",
    "header not found",
    "state histories",
)
_STATE_NOT_AVAILABLE = re.compile(r"\bstate\b[^;]*\bnot available")


class HexData(str):
    """JSON-RPC data made from bytes (``0x`` and hex digits only, by construction: ``of``).

    An eth_call's calldata is hundreds of KB for a large snapshot; ``json.dumps`` scans
    every character of it for escapes (a few ms each).  As the ``data`` of an eth_call's
    call object it is spliced into the request body as it is."""

    __slots__ = ()

    @classmethod
    def of(cls, raw: bytes) -> HexData:
        return cls("0x" + raw.hex())


class RpcError(Exception):
    """The node answered with a JSON-RPC error that is an answer (a revert, bad params)."""

    def __init__(self, code: int, message: str, method: str = "") -> None:
        super().__init__(f"JSON-RPC error {code}: {message[:200]}")
        self.code = code
        self.method = method


class ProviderFault(Exception):
    """This provider cannot answer now; another may.  ``reason`` never names a URL.

    ``rest=False``: ask the next provider, but this one is not to blame (its answer
    could not be confirmed by the others), so it does not rest.
    """

    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        *,
        rest: bool = True,
        state_missing: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.rest = rest
        self.state_missing = state_missing  # the node has pruned the state asked for


@dataclass(frozen=True)
class ProviderPolicy:
    """How a network's providers are used (``[[networks]]`` keys of the same names)."""

    attempt_timeout: float = 10.0  # one operation on one provider
    hedge_floor_seconds: float = 0.2
    recovery_seconds: float = 10.0  # the longest a faulty provider rests before a probe
    max_lag_blocks: int = 5
    max_retry_after_seconds: float = 60.0


@dataclass
class _Provider:
    index: int
    url: str
    latency: float | None = None  # moving average of successful operations, seconds
    sampled_at: float = float("-inf")  # when ``latency`` last had a sample
    faults: int = 0  # consecutive
    resting_until: float = 0.0
    retry_after_until: float = 0.0  # the provider asked us to wait: no probing before
    probing: bool = False
    head: int | None = None
    chain_checked: bool = False  # its eth_chainId was the configured one

    @property
    def label(self) -> str:
        """How logs and messages name it: position, and host without path or query."""
        return f"provider {self.index + 1} ({redact_url(self.url)})"


class Endpoint:
    """One provider, as an operation sees it: JSON-RPC calls and the head it observed."""

    def __init__(self, pool: ProviderPool, provider: _Provider) -> None:
        self._pool = pool
        self._provider = provider

    @property
    def name(self) -> str:
        return f"provider {self._provider.index + 1}"

    @property
    def position(self) -> int:
        """Its place in the network's ``rpc_urls`` (0-based), for ``run(exclude=...)``."""
        return self._provider.index

    async def request(self, method: str, params: list[Any]) -> Any:
        """The ``result`` of one call.  Raises ProviderFault or RpcError."""
        body = {"jsonrpc": "2.0", "id": next(self._pool.ids), "method": method, "params": params}
        with (
            upstream_span(self._pool.network, method, self._provider.index + 1),
            self._pool.measured(self._provider.index, method),
        ):
            return _result(await self._post(body), method)

    async def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Results of a JSON-RPC batch in request order; an answered error is an ``RpcError``
        in its place (not raised), so the caller can say which read failed."""
        if not calls:
            return []
        first = next(self._pool.ids)
        body = [
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        for _ in calls[1:]:
            next(self._pool.ids)
        methods = {method for method, _params in calls}
        label = methods.pop() if len(methods) == 1 else "mixed"
        with (
            upstream_span(self._pool.network, label, self._provider.index + 1, len(calls)),
            self._pool.measured(self._provider.index, "batch"),
        ):
            answers = await self._post(body)
        if not isinstance(answers, list):
            _result(answers, "batch")  # an error object may answer a rejected batch
            raise ProviderFault("batch answer is not a list")
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        if len(by_id) != len(calls) or any(first + i not in by_id for i in range(len(calls))):
            raise ProviderFault("batch answer has the wrong results")
        results: list[Any] = []
        for i, (method, _params) in enumerate(calls):
            try:
                results.append(_result(by_id[first + i], method))
            except RpcError as answered:
                results.append(answered)
        return results

    def note_head(self, head: int) -> None:
        """The head block this provider reported; a fault when it lags too far behind."""
        self._pool.note_head(self._provider, head)

    async def _post(self, body: Any) -> Any:
        session = await self._pool.session()
        data = _encoded(body)
        async with session.post(self._provider.url, data=data, headers=_JSON) as response:
            if response.status != 200:
                raise ProviderFault(
                    f"HTTP {response.status}", _retry_after(response.headers.get("Retry-After"))
                )
            raw = await _read_body(response)
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderFault("answer is not JSON") from None


class ProviderPool:
    """The providers of one network; ``run`` an operation on the best, with failover."""

    def __init__(
        self,
        network: str,
        urls: Sequence[str],
        policy: ProviderPolicy,
        *,
        chain_id: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one URL is needed")
        self.network = network
        self.chain_id = chain_id
        self._policy = policy
        self._clock = clock
        self._providers = [_Provider(i, url) for i, url in enumerate(urls)]
        self._best_head: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self.ids = itertools.count(1)
        self.hedges = 0  # operations also sent to a second provider because the first was slow
        self.disagreements = 0  # cross-checks that found providers disagreeing on a block
        self.wrong_chain: dict[int, int] = {}  # provider position -> the chain id it serves
        self._series: dict[tuple[int, str], _Series] = {}  # (position, method): metrics

    def measured(self, position: int, method: str) -> _Measured:
        """Times one JSON-RPC request (or batch) to a provider and counts its outcome."""
        series = self._series.get((position, method))
        if series is None:  # bounded: the methods are the code's, never a caller's
            series = self._series[position, method] = _Series(self.network, position, method)
        return _Measured(series)

    @property
    def best_head(self) -> int | None:
        """The highest head any provider reported."""
        return self._best_head

    def provider_states(self) -> list[tuple[int, bool, int | None]]:
        """Each provider's position, whether it rests now (after faults, or never to be
        used: another chain), and how many blocks it is behind the best head seen."""
        now, best = self._clock(), self._best_head
        return [
            (
                p.index,
                p.index in self.wrong_chain or (p.faults > 0 and now < p.resting_until),
                None if p.head is None or best is None else best - p.head,
            )
            for p in self._providers
        ]

    async def request(self, method: str, params: list[Any], *, timeout: float) -> Any:
        """One JSON-RPC call on the best provider.  Raises ChainUnavailable or RpcError."""
        return await self.run(lambda endpoint: endpoint.request(method, params), timeout=timeout)

    def __len__(self) -> int:
        return len(self._providers)

    async def run(
        self,
        operation: Callable[[Endpoint], Awaitable[T]],
        *,
        timeout: float,
        exclude: Collection[int] = (),
    ) -> T:
        """``operation`` on one provider at a time (hedged), until one answers.

        Providers whose position is in ``exclude`` are not asked.  Raises
        ``ChainUnavailable`` when none could within ``timeout``; an answer that
        is an error (``RpcError``, a ``ChainUnavailable`` naming a token) is
        raised as it is.
        """
        candidates = [p for p in self._ranked() if p.index not in exclude]
        if not candidates:
            if exclude:
                raise ChainUnavailable(self.network, "no other provider can be asked")
            raise ChainUnavailable(self.network, self._why_none_can_be_asked())
        racing: dict[asyncio.Task[T], tuple[_Provider, float]] = {}  # -> provider, start
        faults: list[str] = []
        state_missing = True  # every fault so far said the state asked for is pruned
        launched = 0
        judge_slow = False  # on the way out: were the providers still racing too slow?

        def launch() -> None:
            nonlocal launched
            provider = candidates[launched]
            launched += 1
            # One probe at a time for a provider that was faulty (others may still
            # ask it when every provider is resting: then it is not the probe).
            probe = provider.faults > 0 and not provider.probing
            if probe:
                provider.probing = True
            task = asyncio.ensure_future(self._attempt(provider, operation, probe=probe))
            racing[task] = (provider, self._clock())

        try:
            async with asyncio.timeout(timeout):
                launch()
                while racing:
                    can_hedge = launched < len(candidates)
                    wait = self._hedge_delay(candidates[launched - 1]) if can_hedge else None
                    done, _ = await asyncio.wait(
                        racing, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not done:
                        self.hedges += 1
                        log.info("network %s: hedging a slow read", self.network)
                        launch()
                        continue
                    for task in done:
                        provider, _started = racing.pop(task)
                        error = task.exception()
                        if error is None:
                            judge_slow = True
                            return task.result()
                        if not isinstance(error, ProviderFault):
                            raise error
                        faults.append(f"provider {provider.index + 1}: {error.reason}")
                        state_missing = state_missing and error.state_missing
                        if launched < len(candidates):
                            launch()  # a fault: the next provider now, not after a delay
        except TimeoutError:
            judge_slow = True
            raise ChainUnavailable(self.network, f"timed out after {timeout:g}s") from None
        finally:
            unfinished = [racing[task] for task in racing if not task.done()]
            for task in racing:
                task.cancel()
            if racing:
                await asyncio.gather(*racing, return_exceptions=True)
            if judge_slow:
                self._judge_unfinished(unfinished)
        raise ChainUnavailable(
            self.network,
            "no provider answered (" + "; ".join(faults) + ")",
            state_missing=state_missing and bool(faults),
        )

    def _why_none_can_be_asked(self) -> str:
        if all(p.index in self.wrong_chain for p in self._providers):
            return "every provider serves another chain"
        return "every provider asked to wait (rate limited)"

    def _judge_unfinished(self, unfinished: Iterable[tuple[_Provider, float]]) -> None:
        """Providers cancelled because another answered first or the deadline passed:
        one silent for longer than its hedge delay has a fault (it rests, then is
        probed), so a stalled first provider cannot keep every request waiting."""
        now = self._clock()
        for provider, started in unfinished:
            waited = now - started
            if waited >= self._hedge_delay(provider):
                self._fault(provider, ProviderFault(f"no answer within {waited:.2f}s"))

    async def check_chains(self, *, timeout: float) -> None:
        """Ask every provider for its chain id now (start-up); those that answer are checked.

        A provider serving another chain is never used (``wrong_chain`` says which);
        one that does not answer now is checked before its first use.
        """

        async def check(provider: _Provider) -> None:
            try:
                async with asyncio.timeout(timeout):
                    await self._check_chain(Endpoint(self, provider), provider, at_start=True)
            except (ProviderFault, RpcError, TimeoutError, aiohttp.ClientError, OSError) as exc:
                if provider.index not in self.wrong_chain:
                    log.warning(
                        "network %s: %s did not answer at start (%s); checked before first use",
                        self.network,
                        provider.label,
                        type(exc).__name__,
                    )

        await asyncio.gather(*(check(p) for p in self._providers))

    async def _check_chain(
        self, endpoint: Endpoint, provider: _Provider, *, at_start: bool = False
    ) -> None:
        """Mark ``provider`` checked, or never to be used again (logged, unless at start:
        then the caller refuses to start and says so)."""
        answer = await endpoint.request("eth_chainId", [])
        try:
            reported = int(answer, 16) if isinstance(answer, str) else -1
        except ValueError:
            reported = -1
        if reported < 0:
            raise ProviderFault("eth_chainId result is not a hex quantity")
        if reported != self.chain_id:
            self.wrong_chain[provider.index] = reported
            provider.resting_until = provider.retry_after_until = float("inf")  # never again
            if not at_start:
                log.error(
                    "network %s: %s serves chain id %d, not %d: never used",
                    self.network,
                    provider.label,
                    reported,
                    self.chain_id,
                )
            raise ProviderFault(f"serves chain id {reported}")
        provider.chain_checked = True

    def demote(self, position: int, reason: str) -> None:
        """The provider at ``position`` answered wrong (outvoted by the others): it rests
        as after any fault, and is probed when the rest is over."""
        self._fault(self._providers[position], ProviderFault(reason))

    def note_head(self, provider: _Provider, head: int) -> None:
        provider.head = head
        if self._best_head is None or head > self._best_head:
            self._best_head = head
        behind = self._best_head - head
        if behind > self._policy.max_lag_blocks:
            raise ProviderFault(f"{behind} blocks behind the best head seen")

    async def session(self) -> aiohttp.ClientSession:
        """One keep-alive session for every provider; deadlines come from ``run``."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- ranking and health -------------------------------------------------------------

    def _ranked(self) -> list[_Provider]:
        now = self._clock()
        usable = [p for p in self._providers if p.index not in self.wrong_chain]
        ready = [p for p in usable if now >= p.resting_until and not p.probing]
        # Resting or being probed: last, since asking early beats failing; but never
        # one that asked to wait.
        resting = [p for p in usable if p not in ready and now >= p.retry_after_until]
        resting.sort(key=lambda p: p.resting_until)

        def latency(p: _Provider) -> float | None:
            # An old sample says little about now: a demoted provider gets asked again.
            fresh = now - p.sampled_at < self._policy.recovery_seconds
            return p.latency if fresh else None

        known = [lat for lat in map(latency, ready) if lat is not None]
        fastest = min(known) if known else None

        def slow(p: _Provider) -> bool:
            lat = latency(p)
            return (
                fastest is not None
                and lat is not None
                and lat > _SLOW_FACTOR * fastest + _SLOW_MARGIN
            )

        return sorted(ready, key=lambda p: (slow(p), p.index)) + resting

    def _hedge_delay(self, provider: _Provider) -> float:
        floor = self._policy.hedge_floor_seconds
        return floor if provider.latency is None else max(floor, _HEDGE_FACTOR * provider.latency)

    async def _attempt(
        self, provider: _Provider, operation: Callable[[Endpoint], Awaitable[T]], *, probe: bool
    ) -> T:
        started = self._clock()
        try:
            async with asyncio.timeout(self._policy.attempt_timeout):
                endpoint = Endpoint(self, provider)
                if not provider.chain_checked:
                    await self._check_chain(endpoint, provider)
                result = await operation(endpoint)
        except ProviderFault as fault:
            if fault.rest:
                self._fault(provider, fault)
            else:  # it answered; the answer could not be confirmed by the others
                self._answered(provider, self._clock() - started)
            raise
        except (RpcError, ChainUnavailable):
            self._answered(provider, self._clock() - started)  # the node is up and said no
            raise
        except TimeoutError:
            timed_out = ProviderFault(f"no answer within {self._policy.attempt_timeout:g}s")
            self._fault(provider, timed_out)
            raise timed_out from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # aiohttp's texts may hold the URL: the kind of error is enough.
            failed = ProviderFault(f"request failed ({type(exc).__name__})")
            self._fault(provider, failed)
            raise failed from None
        finally:
            if probe:
                provider.probing = False
        self._answered(provider, self._clock() - started)
        return result

    def _answered(self, provider: _Provider, elapsed: float) -> None:
        if provider.faults:
            log.info("network %s: %s answers again", self.network, provider.label)
        provider.faults = 0
        provider.resting_until = 0.0
        self._sample(provider, elapsed)

    def _sample(self, provider: _Provider, elapsed: float) -> None:
        if provider.latency is None:
            provider.latency = elapsed
        else:
            provider.latency += _EWMA * (elapsed - provider.latency)
        provider.sampled_at = self._clock()

    def _fault(self, provider: _Provider, fault: ProviderFault) -> None:
        if provider.index in self.wrong_chain:
            return  # never used again: its rest must not end (logged when found)
        now = self._clock()
        provider.faults += 1
        rest = min(_FIRST_REST * 2 ** (provider.faults - 1), self._policy.recovery_seconds)
        if fault.retry_after is not None:
            asked = min(fault.retry_after, self._policy.max_retry_after_seconds)
            provider.retry_after_until = now + asked
            rest = max(rest, asked)
        provider.resting_until = now + rest
        log.warning(
            "network %s: %s failed: %s (resting %.1fs)",
            self.network,
            provider.label,
            fault.reason,
            rest,
        )


_OUTCOMES = ("ok", "error", "fault", "cancelled")


class _Series:
    """One provider and JSON-RPC method's pre-bound metrics (``service.metrics``)."""

    __slots__ = ("outcomes", "seconds")

    def __init__(self, network: str, position: int, method: str) -> None:
        provider = str(position + 1)  # its place in rpc_urls: never the URL
        self.seconds = metrics.UPSTREAM_SECONDS.labels(network, provider, method)
        self.outcomes = {
            outcome: metrics.UPSTREAM_REQUESTS.labels(network, provider, method, outcome)
            for outcome in _OUTCOMES
        }


class _Measured:
    """``with``: the request's time, and its outcome from how the block ended."""

    __slots__ = ("_series", "_started")

    def __init__(self, series: _Series) -> None:
        self._series = series
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            outcome = "ok"
        elif issubclass(kind, RpcError):
            outcome = "error"  # the node answered: a revert, bad params
        elif issubclass(kind, asyncio.CancelledError):
            outcome = "cancelled"  # its attempt timed out, or another provider answered
        else:
            outcome = "fault"
        self._series.outcomes[outcome].inc()
        self._series.seconds.observe(time.perf_counter() - self._started)


def _encoded(body: Any) -> bytes:
    """The request body's JSON, a ``HexData`` call ``data`` spliced in unscanned."""
    params = body.get("params") if isinstance(body, dict) else None
    call = params[0] if isinstance(params, list) and params else None
    data = call.get("data") if isinstance(call, dict) else None
    if type(data) is not HexData:
        return json.dumps(body).encode()
    assert isinstance(params, list) and isinstance(call, dict)
    text = json.dumps({**body, "params": [{**call, "data": _SPLICE}, *params[1:]]})
    if text.count(_SPLICE_JSON) != 1:  # the stand-in's text is in another field too
        return json.dumps(body).encode()
    before, _, after = text.partition(_SPLICE_JSON)
    return b"".join((before.encode(), b'"', data.encode(), b'"', after.encode()))


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused past ``_MAX_BODY_BYTES``.

    ``StreamReader.read(n)`` returns only what has arrived so far (a large
    multicall answer came back cut at 127 KB), so read chunks to the end.
    """
    declared = response.content_length
    if declared is not None and declared > _MAX_BODY_BYTES:
        raise ProviderFault("answer too large")
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > _MAX_BODY_BYTES:
            raise ProviderFault("answer too large")
    return bytes(body)


def _result(response: Any, method: str) -> Any:
    """The result of one JSON-RPC response; its error classified as a fault or an answer."""
    if not isinstance(response, dict):
        raise ProviderFault("malformed JSON-RPC response")
    error = response.get("error")
    if error is not None:
        code, message = -1, str(error)
        if isinstance(error, dict):
            raw_code = error.get("code", -1)
            code = raw_code if isinstance(raw_code, int) else -1
            message = str(error.get("message", ""))
        lowered = message.lower()
        # A revert is the contract's answer, whatever words its reason holds.
        reverted = code == 3 or lowered.startswith("execution reverted")
        missing = any(t in lowered for t in _STATE_TEXTS) or bool(
            _STATE_NOT_AVAILABLE.search(lowered)
        )
        if not reverted and (
            missing or code in _FAULT_CODES or any(t in lowered for t in _FAULT_TEXTS)
        ):
            # A pruned state is no trouble of the node's ("header not found" may be lag: rests).
            rest = not missing or "header not found" in lowered
            raise ProviderFault(
                f"{method}: JSON-RPC error {code}", rest=rest, state_missing=missing
            )
        raise RpcError(code, message, method)
    if "result" not in response:
        raise ProviderFault(f"{method}: JSON-RPC response has no result")
    return response["result"]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), if usable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
