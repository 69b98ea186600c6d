"""A webhook delivery worker in its own process (for the kill -9 test).

    python -m tests.support.webhook_worker DB_PATH RECEIVER_PORT

Opens the database at DB_PATH, starts a ``WebhookDelivery`` (the development
receiver 127.0.0.1:RECEIVER_PORT, short retries), prints "ready" and delivers
until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from service.domain import WebhookPolicy
from service.store.sqlite import open_sqlite_stores
from service.webhooks.delivery import WebhookDelivery
from service.webhooks.destinations import WebhookDestinations
from service.webhooks.http_sender import HttpWebhookSender, SystemResolver


async def main(db_path: Path, receiver_port: int) -> None:
    policy = WebhookPolicy(
        allow_http_hosts=(f"127.0.0.1:{receiver_port}",),
        timeout_seconds=5.0,
        retry_schedule_seconds=(0.1, 0.2, 0.4),
    )
    destinations = WebhookDestinations(policy, SystemResolver())
    stores = await open_sqlite_stores(db_path)
    sender = HttpWebhookSender(policy, destinations, max_connections=4)
    delivery = WebhookDelivery(
        stores.webhooks,
        sender,
        policy,
        destinations=destinations,
        concurrency=4,
        poll_interval_seconds=0.2,
    )
    await delivery.start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await delivery.aclose()
        await sender.aclose()
        await stores.aclose()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
