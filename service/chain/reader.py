"""Snapshots: every balance and price a request needs, read at one block of one network.

With Multicall3 a snapshot is one ``eth_call`` to ``aggregate3`` (split into
several calls pinned to the same block above ``max_calls_per_batch`` calls or
``MAX_CALLDATA_BYTES`` of calldata; ``service.chain.multicall`` encodes and
decodes it from its byte layout, no ``eth_abi`` per call).  Where
the Multicall3 address has no code the reader falls back to a JSON-RPC batch
pinned to one block number.  A block a caller chose (``block_number``) older than
any block Multicall3 was seen at is first asked whether the aggregator had code
then (``eth_getCode`` at that block, remembered: code, once there, stays); where
it had none the snapshot is still one ``eth_call``, a deployless ``aggregate3``
(``service.chain.deployless``).  When every provider says it has pruned such a
block's state, the read fails with ``ArchiveRequired``.  A read that fails or
comes back empty is an error naming the token, never a zero.

A snapshot is one operation on one provider (``ProviderPool.run``): its block
choice and every call pinned to it go to the same node.  A malformed answer
is that provider's fault and the next one is asked.  Block numbers only move
forward: when a provider's read block is older than one already returned for
this network, that block is read from it instead; a provider that cannot
(it is lagging) has a fault, and another is asked.  With ``verify_providers``
set, other providers must vouch for the snapshot's block before it is served
(``service.chain.cross_check``).

At start (``prepare``) every configured ERC-20's ``decimals()`` and
``symbol()`` are read in one snapshot and compared with the configuration: a
wrong ``decimals`` would scale every amount by a power of ten, silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar, cast

from service.chain.cross_check import CrossCheck
from service.chain.deployless import AGGREGATOR, SENDER, deployless_aggregate3
from service.chain.multicall import (
    BALANCE_OF,
    DECIMALS,
    GET_BLOCK_NUMBER,
    GET_CURRENT_BLOCK_TIMESTAMP,
    GET_ETH_BALANCE,
    LATEST_ROUND_DATA,
    MAX_CALLDATA_BYTES,
    SYMBOL,
    Call,
    CallResult,
    MalformedAnswer,
    call_tuple,
    decode_aggregate3,
    decode_symbol,
    decode_uint,
    encode_tuples,
    holder_call_prefix,
    holder_call_tuple,
    holder_raw,
    int_word,
    split_sizes,
    uint_word,
)
from service.chain.providers import Endpoint, HexData, ProviderFault, ProviderPool, RpcError
from service.domain import BlockHeader, FeedPrice, FeedReading, Snapshot, Token
from service.errors import ArchiveRequired, ChainUnavailable, ConfigError
from service.settings import NetworkSettings

__all__ = ["ChainReader"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_HASH = 66  # "0x" and 32 bytes in hex


class _Extra(NamedTuple):
    """A read that is not a holder's balance: one of a token's feed calls, or a start-up check."""

    token: Token
    call: Call
    what: str  # "feed answer", "feed decimals", "decimals" or "symbol"


class _Plan(NamedTuple):
    """A snapshot's reads, in result order: every configured token's balance of each holder
    (holder after holder, tokens in configured order), then the ``extra`` reads.  No
    object per read: the holders as given, and their calls encoded from the templates."""

    holders: Sequence[str]
    extra: tuple[_Extra, ...]
    tuples: list[bytes]  # every call encoded for aggregate3, after the head's two


class ChainReader:
    """Reads snapshots of one network through its providers."""

    def __init__(
        self, network: NetworkSettings, pool: ProviderPool, default_timeout: float
    ) -> None:
        self.network = network
        self._pool = pool
        self._default_timeout = default_timeout  # for reads no caller put a deadline on
        self._has_multicall = True
        # Multicall3 had code at every block from ``_code_since`` on (a read through it
        # proved so), and none at any block up to ``_no_code_through`` (eth_getCode said).
        self._code_since: int | None = None
        self._no_code_through = -1
        self._highest_returned = 0  # monotonic reads: never answer with an older block
        self._cross_check = (
            CrossCheck(pool, network.verify_providers, _block_hash)
            if network.verify_providers >= 2
            else None
        )
        # Per network, once: each token's balance-call template, the head's and the feeds'
        # encoded calls.  A snapshot only adds each holder's 20 bytes to the templates.
        multicall3 = network.multicall3
        self._prefixes = tuple(
            holder_call_prefix(multicall3, GET_ETH_BALANCE)
            if token.address is None
            else holder_call_prefix(token.address, BALANCE_OF)
            for token in network.tokens
        )
        self._currencies = tuple(token.currency for token in network.tokens)
        self._head = _head_calls(multicall3)
        # The same, for a deployless read: calls to the aggregator go to its temporary copy.
        self._deployless_prefixes = tuple(
            holder_call_prefix(AGGREGATOR, GET_ETH_BALANCE) if token.address is None else prefix
            for token, prefix in zip(network.tokens, self._prefixes, strict=True)
        )
        self._deployless_head = _head_calls(AGGREGATOR)
        self._feed_reads = tuple(
            _Extra(token, Call(token.price.address, selector), what)
            for token in network.tokens
            if isinstance(token.price, FeedPrice)
            for selector, what in ((LATEST_ROUND_DATA, "feed answer"), (DECIMALS, "feed decimals"))
        )

    @property
    def uses_multicall(self) -> bool:
        return self._has_multicall

    @property
    def providers(self) -> ProviderPool:
        """The network's providers (``hedges`` and ``disagreements`` count what they did)."""
        return self._pool

    async def prepare(self) -> None:
        """Start-up checks: every provider that answers serves the configured chain;
        Multicall3 has code; each token's decimals and symbol are the configured ones."""
        await self._pool.check_chains(timeout=self._default_timeout)
        for position, reported in sorted(self._pool.wrong_chain.items()):
            raise ConfigError(
                f"networks.{self.network.name}.rpc_urls[{position}]",
                f"the node reports chain id {reported}, the configuration says "
                f"{self.network.chain_id}; refusing to read the wrong chain",
            )

        async def code(endpoint: Endpoint) -> bytes:
            return _data(
                await endpoint.request("eth_getCode", [self.network.multicall3, "latest"]),
                "eth_getCode result",
            )

        self._has_multicall = bool(await self._run(code, self._default_timeout))
        await self._check_tokens()  # reads through Multicall3: notes a block it had code at
        if self._has_multicall and self._code_since is None:  # no token to check: the head
            self._note_code(await self.head_number())

    async def _check_tokens(self) -> None:
        """``decimals()`` and ``symbol()`` of every ERC-20, read in one snapshot, against
        the configuration: a mismatch refuses to start (``ConfigError``).  A token
        whose ``decimals()`` cannot be read (no contract yet, say) is logged and left
        to fail its reads by name; a ``symbol()`` that is absent or neither a string nor
        a bytes32 is not checked.  The native coin has neither."""
        checks = tuple(
            _Extra(token, Call(token.address, selector), what)
            for token in self.network.tokens
            if token.address is not None
            for selector, what in ((DECIMALS, "decimals"), (SYMBOL, "symbol"))
        )
        if not checks:
            return
        reads = self._plan((), checks)

        async def read(endpoint: Endpoint) -> list[CallResult]:
            # The head, whatever the read depth: a young chain's confirmed block may
            # predate the tokens, and a reorg does not change a token's decimals.
            return (await self._read_at(endpoint, reads, "latest"))[2]

        results = iter(await self._run(read, self._default_timeout))
        for i, token in enumerate(self.network.tokens):
            if token.address is not None:  # its reads are the next two: decimals, symbol
                self._check_token(i, token, next(results), next(results))

    def _check_token(self, i: int, token: Token, decimals: CallResult, symbol: CallResult) -> None:
        key = f"networks.{self.network.name}.tokens[{i}]"
        said = decode_uint(decimals.data) if decimals.success else None
        if said is None:
            log.warning(
                "network %s: token %s: decimals() could not be read at start "
                "(is there a contract?); its reads will fail by name",
                self.network.name,
                token.currency,
            )
        elif said != token.decimals:
            raise ConfigError(
                f"{key}.decimals",
                f"the token contract says {said}, the configuration says {token.decimals}",
            )
        onchain = decode_symbol(symbol.data) if symbol.success else None
        expected = token.onchain_symbol or token.currency
        if onchain is None:
            if token.onchain_symbol is not None:
                log.warning(
                    "network %s: token %s: symbol() could not be read; onchain_symbol unchecked",
                    self.network.name,
                    token.currency,
                )
        elif onchain != expected:
            if token.onchain_symbol is not None:
                raise ConfigError(
                    f"{key}.onchain_symbol",
                    f"the token contract's symbol is {_quoted(onchain)}, "
                    f"the configuration says {_quoted(expected)}",
                )
            raise ConfigError(
                f"{key}.symbol",
                f"the token contract's symbol is {_quoted(onchain)}, the configuration "
                f"says {_quoted(expected)}; set onchain_symbol = {_quoted(onchain)} "
                "if the label is intended",
            )

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        """Balances of every configured token for ``addresses`` (and feed prices) at one block.

        The block is the network's read block (tag, or head minus confirmations),
        or ``block_number`` when a caller (the block follower, a query of a past
        block) has chosen it.  ``ArchiveRequired`` when every provider has pruned
        that block's state.
        """
        extra = self._feed_reads if with_prices else ()
        reads = self._plan(addresses, extra)

        async def read(endpoint: Endpoint) -> Snapshot:
            if block_number is not None:
                plan, deployless = reads, False
                if self._has_multicall and not await self._aggregator_at(endpoint, block_number):
                    plan, deployless = self._plan(addresses, extra, deployless=True), True
                number, timestamp, results = await self._read_at(
                    endpoint, plan, hex(block_number), deployless=deployless
                )
                if self._cross_check is not None:
                    await self._cross_check.verify(endpoint, number, timeout=timeout)
                return self._assemble(plan, results, number, timestamp)
            block = await self._block_selector(endpoint)
            number, timestamp, results = await self._read_at(endpoint, reads, block)
            if number < self._highest_returned:
                # Behind a block already served (a load balancer's other node, say): ask
                # this provider for that block; a node that lacks it answers with a fault.
                served = self._highest_returned
                number, timestamp, results = await self._read_at(endpoint, reads, hex(served))
            if self._cross_check is not None:
                await self._cross_check.verify(endpoint, number, timeout=timeout)
                if number < self._highest_returned:
                    # A concurrent read served a newer block during the check: read that
                    # one, and check it, once more.
                    served = self._highest_returned
                    number, timestamp, results = await self._read_at(endpoint, reads, hex(served))
                    await self._cross_check.verify(endpoint, number, timeout=timeout)
            if number < self._highest_returned:
                raise ProviderFault(
                    f"at block {number}, older than block {self._highest_returned} already served"
                )
            snapshot = self._assemble(reads, results, number, timestamp)
            # Checked and raised with no await between: concurrent reads cannot interleave.
            self._highest_returned = number
            return snapshot

        try:
            return await self._run(read, timeout)
        except ChainUnavailable as exc:
            if block_number is not None and exc.state_missing:
                raise ArchiveRequired(self.network.name, block_number) from exc
            raise

    async def _aggregator_at(self, endpoint: Endpoint, number: int) -> bool:
        """Whether Multicall3 had code at block ``number``: known, else ``eth_getCode``.
        A reader that never saw it answer (not prepared) assumes it, as for any read."""
        if self._code_since is None or number >= self._code_since:
            return True
        if number <= self._no_code_through:
            return False
        code = _data(
            await endpoint.request("eth_getCode", [self.network.multicall3, hex(number)]),
            "eth_getCode result",
        )
        if code:
            self._note_code(number)
            return True
        self._no_code_through = max(self._no_code_through, number)
        return False

    def _note_code(self, number: int) -> None:
        if self._code_since is None or number < self._code_since:
            self._code_since = number

    async def _read_at(
        self, endpoint: Endpoint, reads: _Plan, block: str, *, deployless: bool = False
    ) -> tuple[int, int, list[CallResult]]:
        """Every read of ``reads`` at ``block`` (a tag or a hex number) on one provider;
        ``deployless``: through a temporary aggregator (``reads`` planned for it)."""
        if deployless:
            number, timestamp, results = await self._read_multicall(
                endpoint, reads, block, deployless=True
            )
        elif self._has_multicall:
            number, timestamp, results = await self._read_multicall(endpoint, reads, block)
        else:
            number, timestamp, results = await self._read_batch(endpoint, reads, block)
        if block.startswith("0x") and number != int(block, 16):
            raise ProviderFault(f"asked for block {int(block, 16)}, answered block {number}")
        return number, timestamp, results

    async def head_number(self) -> int:
        """The latest block number, from the best provider."""
        return await self._run(self._head_number, self._default_timeout)

    async def _head_number(self, endpoint: Endpoint) -> int:
        head = _quantity(await endpoint.request("eth_blockNumber", []), "block number")
        endpoint.note_head(head)
        return head

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        """``eth_getBlockByNumber`` without transactions, parsed; a malformed answer is
        the node's fault (``ChainUnavailable``), never a crash."""
        tag = hex(tag_or_number) if isinstance(tag_or_number, int) else tag_or_number

        async def read(endpoint: Endpoint) -> BlockHeader:
            return _header(await endpoint.request("eth_getBlockByNumber", [tag, False]), tag)

        return await self._run(read, self._default_timeout)

    async def _block_selector(self, endpoint: Endpoint) -> str:
        """The block tag or number every read of this snapshot is pinned to."""
        if self.network.confirmations == 0:
            return self.network.block_tag
        head = await self._head_number(endpoint)
        return hex(max(head - self.network.confirmations, 0))

    async def _read_multicall(
        self, endpoint: Endpoint, reads: _Plan, block: str, *, deployless: bool = False
    ) -> tuple[int, int, list[CallResult]]:
        tuples = reads.tuples
        # Cut by count and by calldata size; the head's two calls are small, so the
        # first chunk always holds them.
        cuts = split_sizes(
            [len(t) + 32 for t in tuples],  # a tuple and its offset word
            max_calls=self.network.max_calls_per_batch,
            max_bytes=MAX_CALLDATA_BYTES,
        )
        chunks = [tuples[start:stop] for start, stop in cuts]
        if block.startswith("0x"):
            # Pinned already (the follower's block, or head minus confirmations): every
            # chunk goes at once.
            every = await asyncio.gather(
                *(self._aggregate3(endpoint, c, block, deployless=deployless) for c in chunks)
            )
            first_results, more = every[0], every[1:]
        else:
            first_results = await self._aggregate3(endpoint, chunks[0], block)
            more = []
        try:
            number = self._uint(first_results[0], "block number")
            timestamp = self._uint(first_results[1], "block timestamp")
        except ChainUnavailable as exc:  # Multicall3's own getters cannot fail on a sound node
            raise ProviderFault("Multicall3 block fields are malformed") from exc
        if block == "latest":
            endpoint.note_head(number)
        if not deployless:
            self._note_code(number)  # the aggregator answered at this block: it had code
        if not block.startswith("0x"):
            # The first call fixed the block; the remaining chunks are pinned to its number.
            more = await asyncio.gather(
                *(self._aggregate3(endpoint, chunk, hex(number)) for chunk in chunks[1:])
            )
        results = first_results[_HEAD_CALLS:]
        for chunk_results in more:
            results.extend(chunk_results)
        return number, timestamp, results

    def _plan(
        self, holders: Sequence[str], extra: tuple[_Extra, ...], *, deployless: bool = False
    ) -> _Plan:
        """The reads, their calls encoded from the templates (a malformed address raises
        ``ValueError`` here, before any provider is asked); ``deployless``: for a
        temporary aggregator (``service.chain.deployless``)."""
        tuples = list(self._deployless_head if deployless else self._head)
        extend = tuples.extend
        prefixes = self._deployless_prefixes if deployless else self._prefixes
        for holder in holders:
            raw = holder_raw(holder)
            extend([holder_call_tuple(prefix, raw) for prefix in prefixes])
        extend([call_tuple(read.call) for read in extra])
        return _Plan(holders, extra, tuples)

    async def _aggregate3(
        self, endpoint: Endpoint, tuples: Sequence[bytes], block: str, *, deployless: bool = False
    ) -> list[CallResult]:
        """One ``aggregate3`` call; anything but a well-formed answer is the provider's fault."""
        calldata = encode_tuples(tuples)
        payload = (
            {"from": SENDER, "data": HexData.of(deployless_aggregate3(calldata))}
            if deployless
            else {"to": self.network.multicall3, "data": HexData.of(calldata)}
        )
        data = _data(await endpoint.request("eth_call", [payload, block]), "eth_call result")
        if not data:
            raise ProviderFault("Multicall3 returned no data")
        try:
            results = decode_aggregate3(data)
        except MalformedAnswer as exc:
            raise ProviderFault("Multicall3 answer is malformed") from exc
        if len(results) != len(tuples):
            raise ProviderFault("Multicall3 answer has the wrong number of results")
        return results

    async def _read_batch(
        self, endpoint: Endpoint, reads: _Plan, block: str
    ) -> tuple[int, int, list[CallResult]]:
        header = _header(await endpoint.request("eth_getBlockByNumber", [block, False]), block)
        number, timestamp = header.number, header.timestamp
        if block == "latest":
            endpoint.note_head(number)
        pinned = hex(number)
        requests: list[tuple[str, list[Any]]] = []
        native: list[bool] = []  # per request: an eth_getBalance (its answer is a quantity)
        for holder in reads.holders:
            word = b"\0" * 12 + holder_raw(holder)
            for token in self.network.tokens:
                native.append(token.address is None)
                if token.address is None:
                    requests.append(("eth_getBalance", [holder, pinned]))
                else:
                    call = {"to": token.address, "data": "0x" + (BALANCE_OF + word).hex()}
                    requests.append(("eth_call", [call, pinned]))
        for extra in reads.extra:
            native.append(False)
            call = {"to": extra.call.target, "data": "0x" + extra.call.data.hex()}
            requests.append(("eth_call", [call, pinned]))
        answers = await endpoint.batch(requests)
        results = []
        for is_native, answer in zip(native, answers, strict=True):
            if isinstance(answer, RpcError):
                results.append(CallResult(False, b""))
            elif is_native:
                balance = _quantity(answer, "eth_getBalance result")
                results.append(CallResult(True, balance.to_bytes(32, "big")))
            else:
                results.append(CallResult(True, _data(answer, "eth_call result")))
        return number, timestamp, results

    def _assemble(
        self, reads: _Plan, results: list[CallResult], number: int, timestamp: int
    ) -> Snapshot:
        per_holder = len(self._currencies)
        count = per_holder * len(reads.holders)
        if len(results) != count + len(reads.extra):
            raise ProviderFault("wrong number of results")
        # The per-call path: one uint256 word, sliced (the answer may be longer).
        amounts = [
            int.from_bytes(data[:32], "big") if success and len(data) >= 32 else None
            for success, data in results[:count]
        ]
        if None in amounts:
            at = amounts.index(None)
            success, data = results[at]
            raise self._unreadable("balance", data, success, self.network.tokens[at % per_holder])
        currencies = self._currencies
        # zip stops at the currencies: each holder takes its own amounts from the iterator.
        it = iter(cast(list[int], amounts))
        balances = {holder: dict(zip(currencies, it, strict=False)) for holder in reads.holders}
        feed_answers: dict[str, list[int]] = {}
        feed_decimals: dict[str, int] = {}
        for extra, (success, data) in zip(reads.extra, results[count:], strict=True):
            if extra.what == "feed decimals":
                feed_decimals[extra.token.currency] = self._words(
                    extra.what, data, success, extra.token, [8]
                )[0]
            else:
                # latestRoundData(): roundId uint80, answer int256, startedAt, updatedAt,
                # answeredInRound uint80; checked as eth_abi would check them.
                feed_answers[extra.token.currency] = self._words(
                    extra.what, data, success, extra.token, [80, 0, 256, 256, 80]
                )
        feeds = {
            currency: FeedReading(
                answer=words[1], decimals=feed_decimals[currency], updated_at=words[3]
            )
            for currency, words in feed_answers.items()
        }
        return Snapshot(self.network.name, number, timestamp, balances, feeds)

    def _uint(self, result: CallResult, what: str) -> int:
        return self._words(what, result.data, result.success, None, [256])[0]

    def _words(
        self, what: str, data: bytes, success: bool, token: Token | None, bits: list[int]
    ) -> list[int]:
        """The first words of an answer, each a ``uint<bits>`` (0: an ``int256``)."""
        if not success or len(data) < 32 * len(bits):
            raise self._unreadable(what, data, success, token)
        try:
            return [uint_word(data, i, b) if b else int_word(data, i) for i, b in enumerate(bits)]
        except MalformedAnswer:
            raise self._unreadable(what, data, success, token) from None

    def _unreadable(
        self, what: str, data: bytes, success: bool, token: Token | None
    ) -> ChainUnavailable:
        """Why a read's answer is no number: failed, empty or malformed (never a zero)."""
        currency = token.currency if token else None
        if not success:
            return ChainUnavailable(self.network.name, f"{what} read failed", currency)
        if not data:
            # A call to an address without code "succeeds" with nothing: never a zero.
            return ChainUnavailable(
                self.network.name, f"{what} read returned no data (is there a contract?)", currency
            )
        return ChainUnavailable(self.network.name, f"{what} answer is malformed", currency)

    async def _run(self, read: Callable[[Endpoint], Awaitable[T]], timeout: float) -> T:
        """``read`` on the providers; an answered JSON-RPC error is the node saying no."""
        try:
            return await self._pool.run(read, timeout=timeout)
        except RpcError as exc:
            raise ChainUnavailable(
                self.network.name, f"node refused {exc.method} (JSON-RPC error {exc.code})"
            ) from exc


_HEAD_CALLS = 2  # getBlockNumber, getCurrentBlockTimestamp: first in every aggregate3 read


def _head_calls(aggregator: str) -> tuple[bytes, bytes]:
    return (
        call_tuple(Call(aggregator, GET_BLOCK_NUMBER)),
        call_tuple(Call(aggregator, GET_CURRENT_BLOCK_TIMESTAMP)),
    )


def _quantity(value: Any, what: str) -> int:
    """A JSON-RPC quantity (``0x1a``); anything else is the provider's fault."""
    if isinstance(value, str) and value.startswith("0x") and len(value) <= 66:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise ProviderFault(f"{what} is not a hex quantity")


def _data(value: Any, what: str) -> bytes:
    """JSON-RPC data (``0x...``, whole bytes); anything else is the provider's fault."""
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise ProviderFault(f"{what} is not hex data")


async def _block_hash(endpoint: Endpoint, number: int) -> str | None:
    """The hash of block ``number`` on this provider; None when it does not have it."""
    header = await endpoint.request("eth_getBlockByNumber", [hex(number), False])
    if header is None:
        return None
    if not isinstance(header, dict) or header.get("number") != hex(number):
        raise ProviderFault(f"block {number}: malformed header")
    block_hash = header.get("hash")
    if not isinstance(block_hash, str) or len(block_hash) != _HASH:
        raise ProviderFault(f"block {number}: malformed hash")
    _data(block_hash, "block hash")
    return block_hash.lower()


def _quoted(text: str) -> str:
    """A symbol read from a contract, quoted and escaped for a one-line message."""
    return json.dumps(text)


def _header(value: Any, tag: str) -> BlockHeader:
    """A block header; missing or malformed is the provider's fault (another may have it)."""
    if not isinstance(value, dict):
        raise ProviderFault(f"block {tag} is not available")
    try:
        return BlockHeader(
            number=_quantity(value["number"], "block number"),
            hash=str(value["hash"]),
            parent_hash=str(value.get("parentHash", "")),
            timestamp=_quantity(value["timestamp"], "block timestamp"),
        )
    except (KeyError, TypeError) as exc:
        raise ProviderFault(f"block {tag}: malformed header") from exc
