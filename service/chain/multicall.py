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
reader checks that there is one result per call.  ``tests/unit/test_multicall_codec.py``
holds both directions to ``eth_abi`` over random and corrupted inputs.
"""

from __future__ import annotations

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
    "calldata_size",
    "decode_aggregate3",
    "decode_symbol",
    "decode_uint",
    "encode_aggregate3",
    "int_word",
    "split_calls",
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
# 1,000 balance reads (the most max_calls_per_batch allows) are ~219 KiB: for the
# service's own fixed-size calls the count binds first.
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
    raw = bytes.fromhex(address[2:])  # skips spaces: hence the length checks
    if len(address) != 42 or len(raw) != 20 or address[:2] not in ("0x", "0X"):
        raise ValueError("an address is 0x followed by 40 hex digits")
    return _ZEROS[12] + raw


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


def encode_aggregate3(calls: Sequence[Call]) -> bytes:
    """Calldata for ``aggregate3`` with allowFailure=true on every call.

    Failures are allowed so that one bad token is reported by name instead of
    reverting the whole snapshot.
    """
    offsets: list[bytes] = []
    tuples: list[bytes] = []
    at = _WORD * len(calls)  # tuple offsets count from the end of the array's length word
    for target, data in calls:
        size = len(data)
        encoded = b"".join((_call_head(target), size.to_bytes(32, "big"), data, _ZEROS[-size % 32]))
        offsets.append(at.to_bytes(32, "big"))
        tuples.append(encoded)
        at += len(encoded)
    return b"".join((_FIXED, len(calls).to_bytes(32, "big"), *offsets, *tuples))


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
    heads_end = base + _WORD * word(data[start:base], "big")
    if heads_end > end:
        raise MalformedAnswer("more results than the answer holds")
    results: list[CallResult] = []
    append = results.append
    for at in range(base, heads_end, _WORD):
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
    if max_calls < 1:
        raise ValueError("max_calls must be at least 1")
    chunks: list[Sequence[Call]] = []
    first = 0
    size = _EMPTY
    for i, call in enumerate(calls):
        grown = _call_size(call.data)
        if i > first and (i - first >= max_calls or size + grown > max_bytes):
            chunks.append(calls[first:i])
            first = i
            size = _EMPTY
        size += grown
    if first < len(calls):
        chunks.append(calls[first:])
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
