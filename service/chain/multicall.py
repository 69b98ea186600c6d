"""Multicall3 ``aggregate3`` payloads, encoded with eth_abi and precomputed selectors.

web3 contract objects cost milliseconds per call on the Python side; a snapshot
of hundreds of reads is one ABI encode, one ``eth_call`` and one decode here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi.abi import decode, encode

__all__ = [
    "AGGREGATE3",
    "BALANCE_OF",
    "DECIMALS",
    "GET_BLOCK_NUMBER",
    "GET_CURRENT_BLOCK_TIMESTAMP",
    "GET_ETH_BALANCE",
    "LATEST_ROUND_DATA",
    "SYMBOL",
    "Call",
    "CallResult",
    "address_arg",
    "decode_aggregate3",
    "decode_symbol",
    "decode_uint",
    "encode_aggregate3",
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

_MAX_SYMBOL_CHARS = 64  # longer is not a label anyone configured


@dataclass(frozen=True)
class Call:
    """One read inside an aggregate3: ``target`` is a checksummed address."""

    target: str
    data: bytes


@dataclass(frozen=True)
class CallResult:
    success: bool
    data: bytes


def address_arg(address: str) -> bytes:
    """An address as one 32-byte ABI word."""
    return bytes(12) + bytes.fromhex(address[2:])


def encode_aggregate3(calls: Sequence[Call]) -> bytes:
    """Calldata for ``aggregate3`` with allowFailure=true on every call.

    Failures are allowed so that one bad token is reported by name instead of
    reverting the whole snapshot.
    """
    return AGGREGATE3 + encode(
        ["(address,bool,bytes)[]"], [[(c.target, True, c.data) for c in calls]]
    )


def decode_aggregate3(data: bytes) -> list[CallResult]:
    """Results of ``aggregate3``, in call order."""
    (results,) = decode(["(bool,bytes)[]"], data)
    return [CallResult(bool(ok), bytes(out)) for ok, out in results]


def decode_uint(data: bytes) -> int | None:
    """The first word of a call's answer as an unsigned integer; None if there is none."""
    if len(data) < 32:
        return None
    return int.from_bytes(data[:32], "big")


def decode_symbol(data: bytes) -> str | None:
    """What ``symbol()`` answered: an ABI ``string`` (most tokens) or a ``bytes32`` padded
    with zeros (old tokens such as MKR); None when it is neither (absent, reverted, junk)."""
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
