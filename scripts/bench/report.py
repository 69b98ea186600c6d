"""Figures and ratios from the rounds, the targets beside them, and ``BENCHMARKS.md``.

Each ratio is computed within a round (service and reference measured back to
back), then summarised over the rounds as the median and the range (min-max).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from scripts.bench.scenarios import Captured, Measurements
from scripts.bench.world import Sizes

_X = "\N{MULTIPLICATION SIGN}"

__all__ = ["Row", "machine", "missed_targets", "rows", "write_markdown"]


@dataclass
class Row:
    key: str  # profile key: warm, rest, cold, big, directory, watch, subscribe
    path: str
    service: str
    reference: str
    ratio: str
    target: str
    met: bool | None


def _spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def _with_error(cell: str, error: str | None) -> str:
    if error is None:
        return cell
    error = error.replace("|", "/").replace("\n", " ")
    if cell == "n/a":
        return f"**failed** ({error})"
    if error.startswith("incomplete"):
        return f"{cell} (**{error}**)"
    return f"{cell}; some calls **failed** ({error})"


def _incomplete(error: str | None) -> str | None:
    """A reference whose payloads were recorded from a call that failed part-way."""
    if error is None:
        return None
    return (
        "incomplete: the counted server's call failed, so only what it sent before failing"
        f" is replayed: {error}"
    )


def _qps(v: float) -> str:
    return f"{v:,.0f}"


def _ms(v: float) -> str:
    if v >= 0.01:
        return f"{v * 1000:,.1f} ms"
    return f"{v * 1000:.2f} ms" if v >= 0.001 else f"{v * 1000:.3f} ms"


def _ratio(v: float) -> str:
    return f"{v:.2f}"


def _us(v: float) -> str:
    return f"{v:,.0f} µs"


def _per_round(m: Measurements, fn: Callable[[dict[str, Any]], float | None]) -> list[float]:
    values = []
    for row in m.rounds:
        try:
            value = fn(row)
        except (KeyError, ZeroDivisionError, TypeError):
            continue
        if value is not None:
            values.append(value)
    return values


def rows(m: Measurements, captured: Captured, sizes: Sizes) -> list[Row]:
    out: list[Row] = []
    for c in (8, 32):
        svc = _per_round(m, lambda r, c=c: r[f"grpc c{c} service"].qps)
        bare = _per_round(m, lambda r, c=c: r[f"grpc c{c} bare"].qps)
        ratio = _per_round(m, lambda r, c=c: r[f"grpc c{c} service"].qps / r[f"grpc c{c} bare"].qps)
        out.append(
            Row(
                "warm",
                f"warm `GetWalletBalance` qps, {c} concurrent",
                _spread(svc, _qps),
                f"bare `grpc.aio`, same {m.response_bytes} response bytes: {_spread(bare, _qps)}",
                _spread(ratio, _ratio),
                "≥ 0.70",
                statistics.median(ratio) >= 0.70 if ratio else None,
            )
        )
    for c in (8, 32):
        svc = _per_round(m, lambda r, c=c: r[f"grpc c{c} service"].cpu_us_per_request)
        bare = _per_round(m, lambda r, c=c: r[f"grpc c{c} bare"].cpu_us_per_request)
        ratio = _per_round(
            m,
            lambda r, c=c: (
                r[f"grpc c{c} service"].cpu_us_per_request / r[f"grpc c{c} bare"].cpu_us_per_request
            ),
        )
        out.append(
            Row(
                "cpu",
                f"server CPU per warm request, {c} concurrent",
                _spread(svc, _us),
                f"bare `grpc.aio`: {_spread(bare, _us)}",
                _spread(ratio, _ratio) + _X,
                "",
                None,
            )
        )
    rest = _per_round(m, lambda r: r["rest c8 service"].qps)
    grpc8 = _per_round(m, lambda r: r["grpc c8 service"].qps)
    ratio = _per_round(m, lambda r: r["rest c8 service"].qps / r["grpc c8 service"].qps)
    out.append(
        Row(
            "rest",
            "warm REST `GET /v1/wallets/{id}/balance` qps, 8 connections",
            _spread(rest, _qps),
            f"direct gRPC of the same call, 8 concurrent: {_spread(grpc8, _qps)}",
            _spread(ratio, _ratio),
            "≥ 0.80",
            statistics.median(ratio) >= 0.80 if ratio else None,
        )
    )
    bare = _per_round(m, lambda r: r["rest c8 bare"].qps)
    ratio = _per_round(m, lambda r: r["rest c8 service"].qps / r["rest c8 bare"].qps)
    out.append(
        Row(
            "rest-bare",
            "warm REST qps (for reference)",
            _spread(rest, _qps),
            f"bare aiohttp, same JSON: {_spread(bare, _qps)}",
            _spread(ratio, _ratio),
            "",
            None,
        )
    )
    cpu = _per_round(m, lambda r: r["rest c8 service"].cpu_us_per_request)
    cpu_grpc = _per_round(m, lambda r: r["grpc c8 service"].cpu_us_per_request)
    ratio = _per_round(
        m,
        lambda r: r["rest c8 service"].cpu_us_per_request / r["grpc c8 service"].cpu_us_per_request,
    )
    out.append(
        Row(
            "cpu",
            "server CPU per warm REST request (gRPC call included)",
            _spread(cpu, _us),
            f"direct gRPC: {_spread(cpu_grpc, _us)}",
            _spread(ratio, _ratio) + _X,
            "",
            None,
        )
    )
    wallets = 2 * sizes.cold_wallets_per_network
    for key, path, calls in (
        (
            "cold",
            f"cold `GetCustomerBalances`, {wallets} wallets {_X} 3 tokens, 2 networks",
            captured.cold,
        ),
        ("big", f"cold customer with {sizes.big_wallets:,} wallets (1 network)", captured.big),
    ):
        svc = _per_round(m, lambda r, k=key: r[f"{k} service"])
        raw = _per_round(m, lambda r, k=key: r[f"{k} raw"])
        ratio = _per_round(m, lambda r, k=key: r[f"{k} service"] / r[f"{k} raw"])
        count = sum(len(b) for b in calls.values())
        out.append(
            Row(
                key,
                path,
                _with_error(_spread(svc, _ms), m.errors.get(key)),
                _with_error(
                    f"the service's own {count} `aggregate3` `eth_call`s replayed raw, "
                    f"at once: {_spread(raw, _ms)}",
                    m.errors.get(f"{key} raw") or _incomplete(captured.errors.get(key)),
                ),
                _spread(ratio, _ratio) + _X,
                f"≤ 2{_X}",
                statistics.median(ratio) <= 2 if ratio else None,
            )
        )
    lookups = _per_round(m, lambda r: r["directory"])
    small = _per_round(m, lambda r: r["directory small"])
    ratio = _per_round(m, lambda r: r["directory"] / r["directory small"])
    p90 = (
        f"; p90 {statistics.quantiles(m.directory_ms, n=10)[-1]:.2f} ms"
        if len(m.directory_ms) >= 2
        else ""
    )
    out.append(
        Row(
            "directory",
            f"directory lookup: {sizes.directory_customer_wallets}-wallet customer in a "
            f"{sizes.directory_wallets:,}-wallet tenant (`customer_wallets`, in process)",
            f"{_spread(lookups, _ms)}{p90} ({len(m.directory_ms)} distinct customers)",
            f"the same lookup in a {10 * sizes.directory_customer_wallets}-wallet tenant: "
            f"{_spread(small, _ms)}",
            _spread(ratio, _ratio) + _X,
            "≤ 1 ms",
            statistics.median(lookups) <= 0.001 if lookups else None,
        )
    )
    svc = _per_round(m, lambda r: r["watch service"])
    raw = _per_round(m, lambda r: r["watch raw"])
    ratio = _per_round(m, lambda r: r["watch service"] / r["watch raw"])
    count = sum(len(b) for b in captured.watch.values())
    out.append(
        Row(
            "watch",
            f"watch: block mined → last of {sizes.watchers:,} subscribers' messages",
            _with_error(_spread(svc, _ms), m.errors.get("watch")),
            _with_error(
                f"raw read of those addresses (the follower's own {count} `eth_call`s): "
                f"{_spread(raw, _ms)}",
                m.errors.get("watch raw") or _incomplete(captured.errors.get("watch")),
            ),
            _spread(ratio, _ratio) + _X,
            f"≤ 3{_X}",
            statistics.median(ratio) <= 3 if ratio else None,
        )
    )
    bare = _per_round(m, lambda r: r["watch bare push"])
    n = f"{sizes.watchers:,}"
    out.append(
        Row(
            "watch-bare",
            f"watch fan-out: service vs bare `grpc.aio` pushing one prebuilt message to {n}"
            " open streams",
            _spread(svc, _ms),
            _with_error(
                f"bare `grpc.aio`, one of the service's own change messages"
                f" ({m.watch_message_bytes} bytes) pushed to {n} streams: {_spread(bare, _ms)}",
                m.errors.get("watch bare push"),
            ),
            _spread(_per_round(m, lambda r: r["watch service"] / r["watch bare push"]), _ratio)
            + _X,
            "",
            None,
        )
    )
    out.append(
        Row(
            "watch-bound",
            f"watch bound: the bare push to {n} streams vs the raw read",
            _spread(bare, _ms),
            f"raw read of those addresses: {_spread(raw, _ms)}",
            _spread(_per_round(m, lambda r: r["watch bare push"] / r["watch raw"]), _ratio) + _X,
            f"(≤ 3{_X} for the service)",
            None,
        )
    )
    out.append(
        Row(
            "subscribe",
            f"subscribing {sizes.watchers:,} watch streams",
            f"{captured.subscribe_eth_calls:,} `eth_call`s "
            f"({captured.subscribe_upstream_calls:,} upstream requests in all); "
            f"{m.subscribe_seconds:.2f} s to every first message",
            "",
            "",
            "≤ 5 `eth_call`s",
            captured.subscribe_eth_calls <= 5,
        )
    )
    return out


def missed_targets(m: Measurements, captured: Captured, sizes: Sizes) -> set[str]:
    return {row.key for row in rows(m, captured, sizes) if row.met is False}


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "n/a"


def machine(tools: dict[str, str | None]) -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = ("grpcio", "protobuf", "aiohttp", "eth-abi")
    info = {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "packages": ", ".join(f"{p} {metadata.version(p)}" for p in packages),
        **{
            name: _version([path, flag]) if (path := tools.get(name)) else "missing"
            for name, flag in (
                ("anvil", "--version"),
                ("h2load", "--version"),
                ("wrk", "-v"),
                ("py-spy", "--version"),
            )
        },
        "commit": _version(["git", "rev-parse", "--short", "HEAD"]),
    }
    dirty = _version(["git", "status", "--porcelain", "--untracked-files=no"])
    info["commit"] += " (with uncommitted changes)" if dirty not in ("", "n/a") else ""
    return info


def write_markdown(
    path: Path,
    *,
    table: list[Row],
    m: Measurements,
    captured: Captured,
    sizes: Sizes,
    box: dict[str, str],
    load: tuple[str, str],
    notes: list[str],
    naive: str | None,
    elapsed: float,
    command: str,
) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{elapsed / 60:.1f} min. Every reference ran in the same run, on the same machine,"
        f" interleaved with the service: {sizes.repeats} rounds, each running service and"
        " reference back to back (alternating which goes first). Figures are the median"
        " over the rounds with the range (min-max) in brackets; each ratio is computed"
        " within a round, then summarised. Issue 11 has the targets.",
        "",
        "| Path | Service | Reference | Ratio | Target | Met |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        lines.append(
            f"| {row.path} | {row.service} | {row.reference} | {row.ratio} | {row.target} | {met} |"
        )
    lines += [
        "",
        "## How it was measured",
        "",
        "- The world: two anvil chains (`polygon` 31337, `ethereum` 31338) with the demo"
        " contracts (USDC, USDT, a native-coin price feed, Multicall3);"
        f" {sizes.big_wallets + 2 * sizes.cold_wallets_per_network + 1:,} wallets funded by"
        " writing the tokens' `balanceOf` storage (`anvil_setStorageAt`) and"
        " `anvil_setBalance`; a SQLite directory of"
        f" {_directory_rows(sizes):,} wallets. `balances serve` runs as its own process with"
        " REST on, rate limits far above the load (a refused call would count as served),"
        " a cache TTL of an hour and `ws_url` (newHeads) set.",
        f"- gRPC load: {load[0]}; REST load: {load[1]};"
        f" {sizes.load_seconds:g} s per run. h2load counts a gRPC error as HTTP 200, so its"
        " DATA bytes must equal the successes times the framed response (an error carries"
        " no message), and after each round 20 Python calls check the status and the exact"
        " bytes (REST: status and JSON).",
        "- Server CPU per request: the change in utime+stime of the server process"
        " (`/proc/<pid>/stat`) over a load run, divided by the requests answered.",
        "- Cold calls: each sample is a tenant of its own whose customer holds the same"
        " addresses, so the snapshot is never cached and the chain work is the same. The raw"
        " reference replays the very `eth_call` bodies the service sent for that customer"
        " (recorded by a proxy in front of a second, *counted* server with the same"
        " settings; the timed server talks to anvil directly), all at once over one"
        " keep-alive aiohttp session, at `latest`. Service latency is measured by a"
        " `grpc.aio` client that does not decode the answer.",
        "- Directory lookup: `customer_wallets` timed in the bench process on the server's"
        " own SQLite file (opened with `open_sqlite_stores`, after the server started),"
        " a different customer each time; not a warm request minus chain time.",
        "- Watch: 1,000 `WatchWalletBalance` streams on 4 connections, one per wallet; each"
        " round writes a new USDC balance for every watched address, mines one block, and"
        " times from `anvil_mine`'s answer to the 1,000th message. The raw reference replays"
        " the follower's own `eth_call`s for such a block. The bare reference"
        " (`scripts.bench.references watch`) holds as many streams open from the same"
        " client and, on a unary `bench.Push/Push`, sends each one the service's own change"
        " message (bytes captured from a warm-up block): timed from the push to the last"
        " message, it is what gRPC's per-stream sends cost with no other work. Upstream"
        " calls for subscribing are counted on the counted server, from the first stream"
        " opened until 2.5 s after the last first message.",
        f"- Subscribing took {captured.subscribe_seconds:.2f} s on the counted server (through"
        " its proxy).",
    ]
    for scenario, error in captured.errors.items():
        lines.append(f"- On the counted server, the {scenario} call failed: {error}.")
    if m.checks:
        lines += ["", "**Checks that failed:** " + "; ".join(m.checks)]
    if naive:
        lines += ["", "## Naive web3 (context only)", "", naive]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in box.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Commands", "", "```sh", command]
    lines += [cmd for _, cmd in sorted(m.commands.items())]
    lines += ["```"]
    if m.profiles:
        lines += [
            "",
            "## What bounds the missed targets",
            "",
            "py-spy attached to the timed server while the path ran again"
            " (`py-spy record --gil --function --rate 250`): shares are of the samples"
            " taken while a thread held the GIL, i.e. of the interpreter's busy time. C code"
            " run under the GIL (grpc's Cython core, protobuf's upb) is charged to the Python"
            " frame that called it, often the event loop's `Handle._run`; 'inclusive' leaves"
            " out the frames every sample passes through (event loop, threads, entry point).",
        ]
        for profile in m.profiles:
            lines += ["", f"### {profile.title}", ""]
            if profile.error:
                lines.append(f"py-spy failed: {profile.error}")
                continue
            lines += [f"{profile.samples} samples. By area (the innermost frame that names one):"]
            lines += ["", "| share | area |", "|---|---|"]
            lines += [f"| {share:.1%} | {area} |" for area, share in profile.areas]
            lines += ["", "| self | function |", "|---|---|"]
            lines += [f"| {share:.1%} | `{name}` |" for name, share in profile.self_share]
            lines += ["", "| inclusive | function |", "|---|---|"]
            lines += [f"| {share:.1%} | `{name}` |" for name, share in profile.inclusive_share]
    path.write_text("\n".join(lines) + "\n")


def _directory_rows(sizes: Sizes) -> int:
    return (
        1
        + (sizes.repeats * sizes.cold_samples + sizes.profile_cold_calls)
        * 2
        * sizes.cold_wallets_per_network
        + (sizes.repeats * sizes.big_samples + sizes.profile_big_calls) * sizes.big_wallets
        + sizes.watchers
        + sizes.directory_wallets
    )
