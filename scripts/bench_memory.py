"""Memory under a million distinct wallets: the snapshot cache's bound holds RSS flat.

Reads ``--wallets`` distinct wallets (1,000,000 by default), ``--concurrency``
at a time, through the real ``BalanceQueries`` and ``MemorySnapshotCache``
(``--max-entries``, the ``[cache] max_entries`` default unless given; a TTL of
an hour, so only the entry bound drops anything), with stale-if-error on (its
last-good LRU of 10,000 is kept as well).  The directory and the chain are
in-process fakes: a wallet's snapshot holds three tokens, as the demo's does.

RSS (``VmRSS``) is printed every tenth of the run, with the cache's size;
the run fails unless the final RSS is under ``--bound-mb``.  With
``--max-entries 100000000`` the cache is in effect unbounded: RSS grows with
every wallet (the behaviour before the bound; this needs a few GB).

    .venv/bin/python scripts/bench_memory.py [--wallets 1000000] [--max-entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from service.balances import LAST_GOOD_ENTRIES, BalanceQueries
from service.cache import DEFAULT_MAX_ENTRIES, MemorySnapshotCache
from service.domain import PegPrice, Snapshot, Token, Wallet

CREATED = datetime(2024, 1, 1, tzinfo=UTC)
TOKENS = (
    Token("USDC", 6, "0x" + "11" * 20, PegPrice(Fraction(1))),
    Token("USDT", 6, "0x" + "22" * 20, PegPrice(Fraction(1))),
    Token("POL", 18, None, PegPrice(Fraction(1, 2))),
)


def address(n: int) -> str:
    return f"0x{0xBE7C:04x}{n:036x}"


class Directory:
    """Every ``wal_<n>`` exists, at its own address (a new object per lookup, as a store's)."""

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        n = int(wallet_id[4:])
        return Wallet(wallet_id, tenant, f"cus_{n}", "polygon", address(n), CREATED)

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        return [await self.get_wallet(tenant, f"wal_{customer_id[4:]}")]


class Chain:
    """A snapshot of three tokens per address, amounts that differ per address."""

    def __init__(self) -> None:
        self.reads = 0

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        self.reads += 1
        balances = {
            a: {"USDC": 10**6 * len(a) + self.reads, "USDT": self.reads, "POL": 10**18 + self.reads}
            for a in addresses
        }
        return Snapshot("polygon", 20_000_000 + self.reads, 1_700_000_000, balances, {})


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def run(args: argparse.Namespace) -> int:
    chain = Chain()
    cache = MemorySnapshotCache(3600, args.max_entries)
    queries = BalanceQueries(
        Directory(),
        {"polygon": chain},
        {"polygon": TOKENS},
        cache,
        base_currency="USD",
        minor_unit_digits=2,
        read_timeout=5,
        max_stale={"polygon": 60},
    )
    gc.collect()
    start_rss = rss_mb()
    print(
        f"reading {args.wallets:,} distinct wallets, {args.concurrency} at a time;"
        f" cache max_entries {args.max_entries:,}, last good {LAST_GOOD_ENTRIES:,};"
        f" RSS at start {start_rss:.0f} MB"
    )
    started = time.perf_counter()
    step = max(args.wallets // 10, args.concurrency)
    peak = start_rss
    for first in range(0, args.wallets, args.concurrency):
        last = min(first + args.concurrency, args.wallets)
        await asyncio.gather(
            *(queries.wallet_balance("default", f"wal_{n}") for n in range(first, last))
        )
        if last % step == 0 or last == args.wallets:
            rss = rss_mb()
            peak = max(peak, rss)
            print(
                f"  {last:>9,} wallets: RSS {rss:7.0f} MB; cache {len(cache):,} entries,"
                f" last good {len(queries._last_good):,}, in flight {len(queries._inflight)}"
                f" ({time.perf_counter() - started:.0f} s)"
            )
    assert chain.reads == args.wallets, "every wallet was read once"
    final = rss_mb()
    verdict = "under" if final < args.bound_mb else "OVER"
    print(
        f"final RSS {final:.0f} MB (peak {peak:.0f} MB, +{final - start_rss:.0f} MB over the"
        f" start): {verdict} the stated bound of {args.bound_mb:.0f} MB;"
        f" {(final - start_rss) * 1024 * 1024 / max(len(cache), 1):.0f} bytes per cached entry"
    )
    return 0 if final < args.bound_mb else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wallets", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument("--max-entries", type=int, default=DEFAULT_MAX_ENTRIES)
    parser.add_argument("--bound-mb", type=float, default=250, help="the RSS that must hold")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
