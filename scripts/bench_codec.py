"""Micro-benchmark: the Multicall3 codec of ``service.chain.multicall`` against ``eth_abi``.

For a 300-call and a 5,000-call ``aggregate3`` of ``balanceOf(holder)`` reads (the
shape of a snapshot), times with ``timeit`` (best of ``--repeat`` runs):

* encode: the calldata (``eth_abi.encode`` of ``(address,bool,bytes)[]``, as before);
* decode: the ``(bool,bytes)[]`` answer;
* words: each result's ``uint256`` (``eth_abi.decode(["uint256"], ...)`` per result,
  as before, against slicing one word with ``int.from_bytes``);

and prints each figure and the speedup.  Both codecs are first checked to agree on
the inputs.  Timings belong here, never in the test suite.

    .venv/bin/python scripts/bench_codec.py [--repeat 5] [--sizes 300 5000]
"""

from __future__ import annotations

import argparse
import os
import platform
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

from eth_abi.abi import decode, encode
from eth_utils.address import to_checksum_address

from service.chain.multicall import (
    AGGREGATE3,
    BALANCE_OF,
    Call,
    CallResult,
    address_arg,
    decode_aggregate3,
    encode_aggregate3,
)

TOKENS = [to_checksum_address(os.urandom(20)) for _ in range(3)]


def workload(size: int) -> tuple[list[Call], bytes]:
    """``size`` balance reads across three tokens, and a node's answer to them."""
    calls = [
        Call(TOKENS[i % 3], BALANCE_OF + address_arg(to_checksum_address(os.urandom(20))))
        for i in range(size)
    ]
    answers = [(True, int.from_bytes(os.urandom(12), "big").to_bytes(32, "big")) for _ in calls]
    return calls, encode(["(bool,bytes)[]"], [answers])


def eth_abi_encode(calls: list[Call]) -> bytes:
    return AGGREGATE3 + encode(
        ["(address,bool,bytes)[]"], [[(c.target, True, c.data) for c in calls]]
    )


def eth_abi_decode(data: bytes) -> list[CallResult]:
    (results,) = decode(["(bool,bytes)[]"], data)
    return [CallResult(bool(ok), bytes(out)) for ok, out in results]


def eth_abi_words(results: list[CallResult]) -> list[int]:
    return [int(decode(["uint256"], r.data[:32])[0]) for r in results]


def fast_words(results: list[CallResult]) -> list[int]:
    return [int.from_bytes(r.data[:32], "big") for r in results]


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Seconds per call, best of ``repeat`` runs of about 0.2 s each."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 5000])
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'calls':>6} {'step':<7} {'eth_abi ms':>11} {'fast ms':>9} {'speedup':>8}")
    for size in args.sizes:
        calls, answer = workload(size)
        assert encode_aggregate3(calls) == eth_abi_encode(calls)
        results = decode_aggregate3(answer)
        assert results == eth_abi_decode(answer)
        assert fast_words(results) == eth_abi_words(results)
        steps = {
            "encode": (partial(eth_abi_encode, calls), partial(encode_aggregate3, calls)),
            "decode": (partial(eth_abi_decode, answer), partial(decode_aggregate3, answer)),
            "words": (partial(eth_abi_words, results), partial(fast_words, results)),
        }
        total_slow = total_fast = 0.0
        for step, (slow, fast) in steps.items():
            slow_s, fast_s = best(slow, args.repeat), best(fast, args.repeat)
            total_slow += slow_s
            total_fast += fast_s
            print(
                f"{size:>6} {step:<7} {slow_s * 1e3:>11.3f} {fast_s * 1e3:>9.3f} "
                f"{slow_s / fast_s:>7.1f}x"
            )
        print(
            f"{size:>6} {'all':<7} {total_slow * 1e3:>11.3f} {total_fast * 1e3:>9.3f} "
            f"{total_slow / total_fast:>7.1f}x"
        )


if __name__ == "__main__":
    main()
