"""Snapshots: every balance and price a request needs, read at one block of one network.

With Multicall3 a snapshot is one ``eth_call`` to ``aggregate3`` (split into
several calls pinned to the same block above ``max_calls_per_batch``).  Where
the Multicall3 address has no code the reader falls back to a JSON-RPC batch
pinned to one block number.  A read that fails or comes back empty is an error
naming the token, never a zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode

from service.chain.multicall import (
    BALANCE_OF,
    DECIMALS,
    GET_BLOCK_NUMBER,
    GET_CURRENT_BLOCK_TIMESTAMP,
    GET_ETH_BALANCE,
    LATEST_ROUND_DATA,
    Call,
    CallResult,
    address_arg,
    decode_aggregate3,
    encode_aggregate3,
)
from service.chain.rpc import RpcClient, RpcError
from service.domain import BlockHeader, FeedPrice, FeedReading, Snapshot, Token
from service.errors import ChainUnavailable, ConfigError
from service.settings import NetworkSettings

__all__ = ["ChainReader"]


@dataclass(frozen=True)
class _Read:
    """One planned read: a holder's balance of a token, or one of a token's feed calls."""

    token: Token
    holder: str | None  # None for price-feed reads
    call: Call
    what: str  # "balance", "feed answer" or "feed decimals", for error messages


class ChainReader:
    """Reads snapshots of one network through one RpcClient."""

    def __init__(self, network: NetworkSettings, rpc: RpcClient) -> None:
        self.network = network
        self._rpc = rpc
        self._has_multicall = True

    @property
    def uses_multicall(self) -> bool:
        return self._has_multicall

    async def prepare(self) -> None:
        """Start-up checks: the node serves the configured chain; Multicall3 has code."""
        reported = int(await self._request("eth_chainId", []), 16)
        if reported != self.network.chain_id:
            raise ConfigError(
                f"networks.{self.network.name}.chain_id",
                f"the node reports chain id {reported}, the configuration says "
                f"{self.network.chain_id}; refusing to read the wrong chain",
            )
        code = await self._request("eth_getCode", [self.network.multicall3, "latest"])
        self._has_multicall = code not in ("0x", "", None)

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
        or ``block_number`` when a caller (the block follower) has chosen it.
        """
        reads = self._plan(addresses, with_prices)
        try:
            async with asyncio.timeout(timeout):
                block = (
                    hex(block_number) if block_number is not None else await self._block_selector()
                )
                if self._has_multicall:
                    number, timestamp, results = await self._read_multicall(reads, block)
                else:
                    number, timestamp, results = await self._read_batch(reads, block)
        except TimeoutError as exc:
            raise ChainUnavailable(self.network.name, f"timed out after {timeout:g}s") from exc
        return self._assemble(addresses, reads, results, number, timestamp)

    def _plan(self, addresses: Sequence[str], with_prices: bool) -> list[_Read]:
        reads: list[_Read] = []
        for holder in addresses:
            for token in self.network.tokens:
                if token.address is None:
                    call = Call(self.network.multicall3, GET_ETH_BALANCE + address_arg(holder))
                else:
                    call = Call(token.address, BALANCE_OF + address_arg(holder))
                reads.append(_Read(token, holder, call, "balance"))
        if with_prices:
            for token in self.network.tokens:
                if isinstance(token.price, FeedPrice):
                    feed = token.price.address
                    reads.append(_Read(token, None, Call(feed, LATEST_ROUND_DATA), "feed answer"))
                    reads.append(_Read(token, None, Call(feed, DECIMALS), "feed decimals"))
        return reads

    async def head_number(self) -> int:
        """The node's latest block number."""
        return int(await self._request("eth_blockNumber", []), 16)

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        """``eth_getBlockByNumber`` without transactions, parsed; a malformed answer is
        the node's fault (``ChainUnavailable``), never a crash."""
        tag = hex(tag_or_number) if isinstance(tag_or_number, int) else tag_or_number
        header = await self._request("eth_getBlockByNumber", [tag, False])
        if not isinstance(header, dict):
            raise ChainUnavailable(self.network.name, f"block {tag} is not available")
        try:
            return BlockHeader(
                number=int(header["number"], 16),
                hash=str(header["hash"]),
                parent_hash=str(header.get("parentHash", "")),
                timestamp=int(header["timestamp"], 16),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainUnavailable(
                self.network.name, f"block {tag}: malformed header from the node"
            ) from exc

    async def _block_selector(self) -> str:
        """The block tag or number every read of this snapshot is pinned to."""
        if self.network.confirmations == 0:
            return self.network.block_tag
        head = await self.head_number()
        return hex(max(head - self.network.confirmations, 0))

    async def _read_multicall(
        self, reads: list[_Read], block: str
    ) -> tuple[int, int, list[CallResult]]:
        head = [
            Call(self.network.multicall3, GET_BLOCK_NUMBER),
            Call(self.network.multicall3, GET_CURRENT_BLOCK_TIMESTAMP),
        ]
        size = self.network.max_calls_per_batch
        first, rest = reads[: size - len(head)], reads[size - len(head) :]
        first_results = await self._aggregate3([*head, *(r.call for r in first)], block)
        number = self._uint(first_results[0], "block number")
        timestamp = self._uint(first_results[1], "block timestamp")
        # The first call fixed the block; the remaining chunks are pinned to its number.
        chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
        more = await asyncio.gather(
            *(self._aggregate3([r.call for r in chunk], hex(number)) for chunk in chunks)
        )
        results = first_results[len(head) :]
        for chunk_results in more:
            results.extend(chunk_results)
        return number, timestamp, results

    async def _aggregate3(self, calls: list[Call], block: str) -> list[CallResult]:
        payload = {"to": self.network.multicall3, "data": "0x" + encode_aggregate3(calls).hex()}
        answer = await self._request("eth_call", [payload, block])
        data = bytes.fromhex(str(answer).removeprefix("0x"))
        if not data:
            raise ChainUnavailable(self.network.name, "Multicall3 returned no data")
        try:
            results = decode_aggregate3(data)
        except Exception as exc:  # eth_abi raises several unrelated types on bad input
            raise ChainUnavailable(self.network.name, "Multicall3 answer is malformed") from exc
        if len(results) != len(calls):
            raise ChainUnavailable(self.network.name, "Multicall3 answer has the wrong length")
        return results

    async def _read_batch(
        self, reads: list[_Read], block: str
    ) -> tuple[int, int, list[CallResult]]:
        header = await self._request("eth_getBlockByNumber", [block, False])
        if not isinstance(header, dict):
            raise ChainUnavailable(self.network.name, f"block {block} is not available")
        number, timestamp = int(header["number"], 16), int(header["timestamp"], 16)
        pinned = hex(number)
        requests: list[tuple[str, list[Any]]] = []
        for read in reads:
            if read.token.address is None and read.holder is not None:
                requests.append(("eth_getBalance", [read.holder, pinned]))
            else:
                call = {"to": read.call.target, "data": "0x" + read.call.data.hex()}
                requests.append(("eth_call", [call, pinned]))
        answers = await self._rpc.batch(requests) if requests else []
        results = []
        for read, answer in zip(reads, answers, strict=True):
            if isinstance(answer, RpcError):
                results.append(CallResult(False, b""))
            elif read.token.address is None and read.holder is not None:
                results.append(CallResult(True, int(answer, 16).to_bytes(32, "big")))
            else:
                results.append(CallResult(True, bytes.fromhex(str(answer).removeprefix("0x"))))
        return number, timestamp, results

    def _assemble(
        self,
        addresses: Sequence[str],
        reads: list[_Read],
        results: list[CallResult],
        number: int,
        timestamp: int,
    ) -> Snapshot:
        balances: dict[str, dict[str, int]] = {a: {} for a in addresses}
        feed_words: dict[str, dict[str, tuple[Any, ...]]] = {}
        for read, result in zip(reads, results, strict=True):
            if read.holder is not None:
                balances[read.holder][read.token.currency] = self._uint(
                    result, read.what, read.token
                )
            else:
                types = ["uint80", "int256", "uint256", "uint256", "uint80"]
                if read.what == "feed decimals":
                    types = ["uint8"]
                words = self._decode(result, types, read.what, read.token)
                feed_words.setdefault(read.token.currency, {})[read.what] = words
        feeds = {
            currency: FeedReading(
                answer=int(words["feed answer"][1]),
                decimals=int(words["feed decimals"][0]),
                updated_at=int(words["feed answer"][3]),
            )
            for currency, words in feed_words.items()
        }
        return Snapshot(self.network.name, number, timestamp, balances, feeds)

    def _uint(self, result: CallResult, what: str, token: Token | None = None) -> int:
        return int(self._decode(result, ["uint256"], what, token)[0])

    def _decode(
        self, result: CallResult, types: list[str], what: str, token: Token | None
    ) -> tuple[Any, ...]:
        currency = token.currency if token else None
        if not result.success:
            raise ChainUnavailable(self.network.name, f"{what} read failed", currency)
        if not result.data:
            # A call to an address without code "succeeds" with nothing: never a zero.
            raise ChainUnavailable(
                self.network.name, f"{what} read returned no data (is there a contract?)", currency
            )
        if len(result.data) < 32 * len(types):
            raise ChainUnavailable(self.network.name, f"{what} answer is malformed", currency)
        return tuple(decode(types, result.data[: 32 * len(types)]))

    async def _request(self, method: str, params: list[Any]) -> Any:
        try:
            return await self._rpc.request(method, params)
        except RpcError as exc:
            raise ChainUnavailable(
                self.network.name, f"node refused {method} (JSON-RPC error {exc.code})"
            ) from exc
