"""Multicall3 ``aggregate3`` payloads, encoded and decoded by hand from their byte layout.

web3 contract objects cost milliseconds per call on the Python side, and even
``eth_abi`` spends tens of microseconds on each call's tuple; a snapshot of
hundreds of reads is one encode, one ``eth_call`` and one decode here, each a
few slices and ``int.from_bytes`` per call.  The layouts are regular:

calldata of ``aggregate3((address,bool,bytes)[] calls)``::

    selector | 0x20 | n | n offsets (from after n) | n tuples:
        target (12 zero bytes, 20 address bytes) | 1 (allowFailure) | 0x60 |
        len(callData) | callData zero-padded to 32 bytes

its answer, ``(bool success, bytes returnData)[]``::

    offset of the array | n | n offsets (from after n) | n tuples:
        success (0 or 1) | offset of returnData (from the tuple) | len | data padded

The decoder follows every offset as ``eth_abi`` (strict) does and refuses what it
refuses (``MalformedAnswer``): an offset into the head or past the end, a length
past the end, a bool that is not 0 or 1, non-zero padding.  Like ``eth_abi`` and
Solidity's ``abi.decode`` it ignores bytes after what the offsets reach; the
reader checks that there is one result per call.  The leading results that have the
canonical shape of a one-word answer (balance reads, Multicall3's getters) are read in
one pass: their offsets compared with the expected ones, their words matched by one
regex; the general loop reads whatever follows (price feeds' longer answers, failures).
The reader builds the calldata from per-token templates (``holder_call_prefix``) filled
with each holder's 20 bytes.  ``tests/unit/test_multicall_codec.py`` holds both directions
to ``eth_abi`` over random and corrupted inputs, the one-word fast path included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from eth_abi.abi import decode

__all__ = [
    "AGGREGATE3",
    "BALANCE_OF",
    "DECIMALS",
    "GET_BLOCK_NUMBER",
    "GET_CURRENT_BLOCK_TIMESTAMP",
    "GET_ETH_BALANCE",
    "LATEST_ROUND_DATA",
    "MAX_CALLDATA_BYTES",
    "SYMBOL",
    "Call",
    "CallResult",
    "MalformedAnswer",
    "address_arg",
    "call_tuple",
    "calldata_size",
    "decode_aggregate3",
    "decode_symbol",
    "decode_uint",
    "encode_aggregate3",
    "encode_tuples",
    "holder_call_prefix",
    "holder_call_tuple",
    "holder_raw",
    "int_word",
    "split_calls",
    "split_sizes",
    "uint_word",
]

# keccak256(signature)[:4], precomputed so no hashing happens per request.
AGGREGATE3 = bytes.fromhex("82ad56cb")  # aggregate3((address,bool,bytes)[])
BALANCE_OF = bytes.fromhex("70a08231")  # balanceOf(address)
GET_ETH_BALANCE = bytes.fromhex("4d2301cc")  # getEthBalance(address)
GET_BLOCK_NUMBER = bytes.fromhex("42cbb15c")  # getBlockNumber()
GET_CURRENT_BLOCK_TIMESTAMP = bytes.fromhex("0f28c97d")  # getCurrentBlockTimestamp()
LATEST_ROUND_DATA = bytes.fromhex("feaf968c")  # latestRoundData()
DECIMALS = bytes.fromhex("313ce567")  # decimals()
SYMBOL = bytes.fromhex("95d89b41")  # symbol()

# The most calldata one aggregate3 carries before the reader splits (as well as at
# max_calls_per_batch).  Hex-encoded in JSON it is ~512 KiB: half of the 1 MiB
# request limit common in front of nodes (nginx's default), a tenth of geth's 5 MiB.
# 1,000 balance reads (max_calls_per_batch's default and most) are ~219 KiB: for the
# service's own fixed-size calls the count binds first.  Gas, measured on anvil with
# cold storage (eth_estimateGas of aggregate3 with 1,000 balanceOf/getEthBalance
# calls): ~6.2M, a fifth of a 30M block and an eighth of geth's 50M eth_call gas cap;
# a proxied token (USDC's) adds a delegatecall per read, still far under either.
# The count stays at most 1,000: the dev chain's Vyper Multicall3 takes 1,024.
MAX_CALLDATA_BYTES = 256 * 1024

_MAX_SYMBOL_CHARS = 64  # longer is not a label anyone configured
_WORD = 32
_FALSE = bytes(32)
_TRUE = (1).to_bytes(32, "big")
_ZEROS = tuple(bytes(n) for n in range(32))  # the padding after n bytes is _ZEROS[-n % 32]
_FIXED = AGGREGATE3 + (_WORD).to_bytes(32, "big")  # selector, offset of the one argument
_PER_CALL = 5 * _WORD  # its offset, target, allowFailure, offset and length of callData
_EMPTY = len(_FIXED) + _WORD  # an aggregate3 of no calls: selector, offset, length


class MalformedAnswer(ValueError):
    """An answer that is not the ABI encoding it should be: the provider's fault."""


class Call(NamedTuple):
    """One read inside an aggregate3: ``target`` is a 0x-prefixed address."""

    target: str
    data: bytes


class CallResult(NamedTuple):
    success: bool
    data: bytes


def address_arg(address: str) -> bytes:
    """An address as one 32-byte ABI word (12 zero bytes, then its 20 bytes)."""
    return _ZEROS[12] + holder_raw(address)


@lru_cache(maxsize=1024)  # targets are the few tokens, feeds and Multicall3 itself
def _call_head(target: str) -> bytes:
    """A call tuple's first three words: target, allowFailure = true, callData's offset."""
    return address_arg(target) + _TRUE + (3 * _WORD).to_bytes(32, "big")


def _call_size(data: bytes) -> int:
    """The bytes one call adds to the calldata."""
    return _PER_CALL + len(data) + (-len(data) % 32)


def calldata_size(calls: Sequence[Call]) -> int:
    """The length of ``encode_aggregate3(calls)``, without encoding."""
    return _EMPTY + sum(_call_size(c.data) for c in calls)


def call_tuple(call: Call) -> bytes:
    """One call's ``(address,bool,bytes)`` tuple as it sits in the calldata (its offset
    word, in the array's head, comes on top: ``encode_tuples``)."""
    size = len(call.data)
    return b"".join(
        (_call_head(call.target), size.to_bytes(32, "big"), call.data, _ZEROS[-size % 32])
    )


# A call of ``selector(address holder)``: 36 bytes of callData, padded to 64.  Its tuple is
# a prefix fixed per (target, selector), the holder's 20 bytes, then 28 zero bytes.
_HOLDER_DATA = 4 + _WORD
_HOLDER_PAD = _ZEROS[-_HOLDER_DATA % 32]


@lru_cache(maxsize=1024)
def holder_call_prefix(target: str, selector: bytes) -> bytes:
    """The bytes of a ``selector(address)`` call tuple before the holder's 20 address bytes."""
    return _call_head(target) + _HOLDER_DATA.to_bytes(32, "big") + selector + _ZEROS[12]


def holder_call_tuple(prefix: bytes, holder: bytes) -> bytes:
    """``call_tuple(Call(target, selector + address word))`` from its prefix and the holder's
    20 raw bytes (``holder_raw``): no per-call encoding on the hot path."""
    return prefix + holder + _HOLDER_PAD


def holder_raw(address: str) -> bytes:
    """An address's 20 bytes; ``ValueError`` unless it is 0x and 40 hex digits."""
    raw = bytes.fromhex(address[2:])  # skips spaces: hence the length checks
    if len(address) != 42 or len(raw) != 20 or address[:2] not in ("0x", "0X"):
        raise ValueError("an address is 0x followed by 40 hex digits")
    return raw


def encode_aggregate3(calls: Sequence[Call]) -> bytes:
    """Calldata for ``aggregate3`` with allowFailure=true on every call.

    Failures are allowed so that one bad token is reported by name instead of
    reverting the whole snapshot.
    """
    return encode_tuples([call_tuple(c) for c in calls])


def encode_tuples(tuples: Sequence[bytes]) -> bytes:
    """Calldata for ``aggregate3`` of calls already encoded (``call_tuple``)."""
    offsets: list[bytes] = []
    append = offsets.append
    at = _WORD * len(tuples)  # tuple offsets count from the end of the array's length word
    for encoded in tuples:
        append(at.to_bytes(32, "big"))
        at += len(encoded)
    return b"".join((_FIXED, len(tuples).to_bytes(32, "big"), *offsets, *tuples))


# A run of results of the regular shape (a one-word answer: success, returnData's offset
# 0x40, length 32, the word), back to back.
_REGULAR_RUN = re.compile(rb"(?:\x00{31}[\x00\x01]\x00{31}\x40\x00{31}\x20.{32})*", re.DOTALL)
_REGULAR_SIZE = 4 * _WORD
_MAX_REGULAR = 4096  # results in an answer the fast path considers (a batch is at most ~1,000)


@lru_cache(maxsize=64)
def _regular_heads(n: int) -> bytes:
    """The element offsets of ``n`` results of the regular shape, back to back."""
    return b"".join((_WORD * n + _REGULAR_SIZE * i).to_bytes(32, "big") for i in range(n))


def _regular_run(data: bytes, base: int, n: int, heads_end: int) -> list[CallResult]:
    """The leading results that are one-word answers at their canonical offsets (balance
    reads, Multicall3's getters), read in a few comparisons and one regex pass; the
    general loop goes on from there.  What this reads, it reads as the loop would."""
    if n > _MAX_REGULAR:
        return []
    expected = _regular_heads(n)
    heads = data[base:heads_end]
    if heads == expected:
        count = n
    else:  # the longest prefix of canonical offsets (binary search on prefix equality)
        low, high = 0, n
        while low < high:
            middle = (low + high + 1) // 2
            if heads[: _WORD * middle] == expected[: _WORD * middle]:
                low = middle
            else:
                high = middle - 1
        # Offset ``low`` is off: result ``low - 1`` is not 128 bytes long, so not regular.
        count = max(low - 1, 0)
    stop = min(heads_end + _REGULAR_SIZE * count, len(data))
    # Greedy: as many whole regular results as there are from the first on.
    run = _REGULAR_RUN.match(data, heads_end, stop)  # matches, if only the empty run
    stop = run.end() if run is not None else heads_end
    return [
        CallResult(data[at + 31] == 1, data[at + 96 : at + 128])
        for at in range(heads_end, stop, _REGULAR_SIZE)
    ]


def decode_aggregate3(data: bytes) -> list[CallResult]:
    """Results of ``aggregate3``, in call order; ``MalformedAnswer`` unless well formed."""
    end = len(data)
    if end < _WORD:
        raise MalformedAnswer("no array offset")
    word = int.from_bytes  # bound once: this loop is the cold path's hottest
    start = word(data[:32], "big")
    if not _WORD <= start <= end - _WORD:
        raise MalformedAnswer("array offset out of bounds")
    base = start + _WORD  # where the element offsets start, and what they count from
    n = word(data[start:base], "big")
    heads_end = base + _WORD * n
    if heads_end > end:
        raise MalformedAnswer("more results than the answer holds")
    results = _regular_run(data, base, n, heads_end)
    append = results.append
    for at in range(base + _WORD * len(results), heads_end, _WORD):
        item = base + word(data[at : at + 32], "big")
        # Not into the offsets, and room for its first two words.
        if not heads_end <= item <= end - 2 * _WORD:
            raise MalformedAnswer("result offset out of bounds")
        flag = data[item : item + 32]
        if flag == _TRUE:
            success = True
        elif flag == _FALSE:
            success = False
        else:
            raise MalformedAnswer("success is not a bool")
        length_at = item + word(data[item + 32 : item + 64], "big")
        if not item + 2 * _WORD <= length_at <= end - _WORD:
            raise MalformedAnswer("returnData offset out of bounds")
        body = length_at + _WORD
        size = word(data[length_at:body], "big")
        stop = body + size
        pad = -size % 32
        if stop + pad > end:
            raise MalformedAnswer("returnData past the end")
        if pad and data[stop : stop + pad] != _ZEROS[pad]:
            raise MalformedAnswer("returnData padding is not zero")
        append(CallResult(success, data[body:stop]))
    return results


def split_calls(
    calls: Sequence[Call], *, max_calls: int, max_bytes: int = MAX_CALLDATA_BYTES
) -> list[Sequence[Call]]:
    """``calls`` in order, cut into chunks of at most ``max_calls`` calls whose aggregate3
    calldata stays within ``max_bytes``.  viem's multicall rule (a call that would take
    its chunk over the budget starts the next one; a call alone over it goes alone), but
    measured on the whole encoded calldata, which is what a node's request limit sees,
    where viem counts only the calls' own data (``batchSize``, 1,024 bytes by default)."""
    cuts = split_sizes(
        [_call_size(c.data) for c in calls], max_calls=max_calls, max_bytes=max_bytes
    )
    return [calls[start:stop] for start, stop in cuts]


def split_sizes(sizes: Sequence[int], *, max_calls: int, max_bytes: int) -> list[tuple[int, int]]:
    """``split_calls`` on the calls' sizes (what each adds to the calldata: its tuple and
    its offset word): the ``(start, stop)`` of each chunk."""
    if max_calls < 1:
        raise ValueError("max_calls must be at least 1")
    chunks: list[tuple[int, int]] = []
    first = 0
    size = _EMPTY
    for i, grown in enumerate(sizes):
        if i > first and (i - first >= max_calls or size + grown > max_bytes):
            chunks.append((first, i))
            first = i
            size = _EMPTY
        size += grown
    if first < len(sizes):
        chunks.append((first, len(sizes)))
    return chunks


def uint_word(data: bytes, index: int, bits: int = 256) -> int:
    """Word ``index`` of an answer as a ``uint<bits>``; ``MalformedAnswer`` when the
    answer is shorter or the value does not fit (``eth_abi`` refuses such padding)."""
    at = _WORD * index
    if len(data) < at + _WORD:
        raise MalformedAnswer("answer too short")
    value = int.from_bytes(data[at : at + 32], "big")
    if value >> bits:
        raise MalformedAnswer(f"not a uint{bits}")
    return value


def int_word(data: bytes, index: int) -> int:
    """Word ``index`` of an answer as an ``int256`` (two's complement)."""
    at = _WORD * index
    if len(data) < at + _WORD:
        raise MalformedAnswer("answer too short")
    return int.from_bytes(data[at : at + 32], "big", signed=True)


def decode_uint(data: bytes) -> int | None:
    """The first word of a call's answer as an unsigned integer; None if there is none."""
    if len(data) < 32:
        return None
    return int.from_bytes(data[:32], "big")


def decode_symbol(data: bytes) -> str | None:
    """What ``symbol()`` answered: an ABI ``string`` (most tokens) or a ``bytes32`` padded
    with zeros (old tokens such as MKR); None when it is neither (absent, reverted, junk).
    Read once per token at start: ``eth_abi`` is fine here."""
    text: str | None = None
    if len(data) == 32:
        raw = data.split(b"\0", 1)[0]  # bytes32: the text ends at the first zero byte
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif len(data) >= 64:
        try:
            (text,) = decode(["string"], data)
        except Exception:  # eth_abi raises several unrelated types on bad input
            return None
    text = text.rstrip("\0") if text else text  # some pad their string with zeros
    if not text or len(text) > _MAX_SYMBOL_CHARS or not text.isprintable():
        return None
    return text
