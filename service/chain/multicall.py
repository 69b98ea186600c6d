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
    "Call",
    "CallResult",
    "address_arg",
    "decode_aggregate3",
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
