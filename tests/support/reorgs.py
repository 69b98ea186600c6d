"""Checking that notifications converge through a reorg: what a webhook receiver and a
stream subscriber applying events in order end at, against the chain read by raw JSON-RPC
(the two monitored wallets of ``tests.support.monitoring``)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from service.devchain.rpc import rpc_call
from service.money import format_amount
from tests.support.monitoring import RECEIVER, SENDER, verified
from tests.support.watching import Watch
from tests.support.webhook_receiver import WebhookReceiver

ADDRESSES = {SENDER.wallet_id: SENDER.address, RECEIVER.wallet_id: RECEIVER.address}
DECIMALS = {"USDC": 6, "POL": 18}
BALANCE_OF = "0x70a08231"


async def chain_says(url: str, usdc: str, wallet_id: str, currency: str) -> str:
    """The wallet's balance at the head, by raw JSON-RPC, formatted as events are."""
    address = ADDRESSES[wallet_id]
    if currency == "POL":
        raw = int(await rpc_call(url, "eth_getBalance", [address, "latest"]), 16)
    else:
        data = BALANCE_OF + address[2:].lower().rjust(64, "0")
        raw = int(await rpc_call(url, "eth_call", [{"to": usdc, "data": data}, "latest"]), 16)
    return format_amount(raw, DECIMALS[currency])


@dataclass
class Applied:
    """What a receiver applying each event in arrival order holds (a retry is skipped)."""

    balances: dict[tuple[str, str], str]
    corrections: list[dict[str, Any]]
    payloads: dict[str, set[bytes]]  # every body seen under each event ID


def apply_events(secret: str, receiver: WebhookReceiver) -> Applied:
    balances: dict[tuple[str, str], str] = {}
    corrections = []
    payloads: dict[str, set[bytes]] = defaultdict(set)
    for hit in list(receiver.received):
        seen = hit.event_id in payloads
        payloads[hit.event_id].add(hit.body)
        if seen:
            continue
        data = verified(secret, hit)["data"]
        key = (data["wallet_id"], data["currency"])
        if data.get("reorged"):
            corrections.append(data)
        balances[key] = data["balance"]
    return Applied(balances, corrections, payloads)


async def canonical(url: str, usdc: str, keys: Any) -> dict[tuple[str, str], str]:
    return {key: await chain_says(url, usdc, *key) for key in keys}


async def converged(url: str, usdc: str, secret: str, receiver: WebhookReceiver) -> Applied:
    """Wait until the receiver's applied balances are the chain's; what it applied."""
    applied = apply_events(secret, receiver)
    truth = await canonical(url, usdc, applied.balances)
    await receiver.wait_until(lambda: apply_events(secret, receiver).balances == truth)
    await asyncio.sleep(0.5)  # and nothing contradicting it follows
    applied = apply_events(secret, receiver)
    assert applied.balances == truth
    for event_id, bodies in applied.payloads.items():
        assert len(bodies) == 1, f"event {event_id} carried {len(bodies)} payloads"
    return applied


async def stream_until(watch: Watch, amount: str, seen: list[Any], timeout: float = 10) -> None:
    """Read ``watch`` (appending to ``seen``) until its latest USDC amount is ``amount``."""
    async with asyncio.timeout(timeout):
        while True:
            message = await watch.next(timeout)
            seen.append(message)
            if {b.currency: b.amount for b in message.balances}["USDC"] == amount:
                return


def stream_applies(seen: list[Any], start: str) -> str:
    """A subscriber applying each message's changes in order."""
    held = start
    for message in seen:
        for change in message.changes:
            if change.currency == "USDC":
                assert change.previous_amount == held  # relative to the previous message
                held = change.amount
    return held
