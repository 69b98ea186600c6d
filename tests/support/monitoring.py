"""A small chain to monitor: two funded wallets of one customer, a rebasing token, and the
settings and checks of the balance-monitoring tests (followers polling, webhooks retrying fast)."""

from __future__ import annotations

import json
from typing import Any

from eth_utils.address import to_checksum_address
from standardwebhooks import Webhook

from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import deploy_rebasing_token, mint_shares
from service.devchain.world import POLYGON, DemoWallet, DemoWorld, deploy_network, fund_wallets
from service.settings import WatchSettings, WebhookSettings
from tests.support.webhook_receiver import Received, WebhookReceiver

POLL = 0.1  # the followers' poll interval
RETRIES = (0.1, 0.2, 0.4, 0.8, 1.6)  # [webhooks] retry_schedule_seconds: 3.1 s in all
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def webhook_settings(*receivers: WebhookReceiver) -> dict[str, Any]:
    """Fields of Settings: followers polling, webhooks retrying fast, and ``receivers``
    (started first: their ports go into the config) as the development receivers."""
    return {
        "watch": WatchSettings(poll_interval_seconds=POLL),
        "webhooks": WebhookSettings(
            allow_http_hosts=tuple(f"127.0.0.1:{r.port}" for r in receivers),
            timeout_seconds=2,
            retry_schedule_seconds=RETRIES,
        ),
    }


def holder(n: int) -> str:
    return to_checksum_address(f"0x{0xE2E0:04x}{n:036x}")


SENDER = DemoWallet(
    "wal_sender", "cus_acme", "polygon", holder(1), {"USDC": 1_000_000, "POL": 10**18}
)
RECEIVER = DemoWallet("wal_receiver", "cus_acme", "polygon", holder(2), {"USDC": 2_000_000})
RBT_SHARES = 3_000_000  # the receiver's rebasing-token shares: 3.00 RBT at index 1.0


async def monitored_world(start_anvil: AnvilFactory) -> DemoWorld:
    """A fresh polygon-like node: USDC, USDT, POL and RBT; SENDER and RECEIVER funded."""
    node = start_anvil(POLYGON.chain_id)
    await node.start()
    world = DemoWorld()
    network = await deploy_network(POLYGON, node.url)
    # A token of the network like any other (6 decimals, pegged) whose balances rebase.
    network.tokens["RBT"] = await deploy_rebasing_token(node.url, "Rebasing", "RBT", 6)
    world.networks["polygon"] = network
    await fund_wallets(world, [SENDER, RECEIVER])
    await mint_shares(node.url, network.tokens["RBT"], RECEIVER.address, RBT_SHARES)
    return world


def verified(secret: str, received: Received) -> dict[str, Any]:
    """The body, after ``standardwebhooks`` checked its signature (raises if it does not)."""
    body: dict[str, Any] = Webhook(secret).verify(received.text, received.headers)
    return body


def data_of(received: Received) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(received.body)["data"]
    return data


def collapsed(ids: list[str]) -> list[str]:
    """``ids`` without consecutive repeats (the retries of one event)."""
    return [x for i, x in enumerate(ids) if i == 0 or ids[i - 1] != x]
