"""A webhook delivery worker in its own process (for the kill -9 test).

    python -m tests.webhook_worker DB_PATH

Opens the directory at DB_PATH, starts a ``WebhookDelivery`` (http allowed to
127.0.0.1, short retries), prints "ready" and delivers until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from service.config import WebhookSettings
from service.directory.sqlite import SqliteWalletDirectory
from service.webhooks.delivery import WebhookDelivery

SETTINGS = WebhookSettings(
    allow_http_hosts=("127.0.0.1",), timeout_seconds=5.0, retry_schedule_seconds=(0.1, 0.2, 0.4)
)


async def main(db_path: Path) -> None:
    store = await SqliteWalletDirectory.open(db_path)
    delivery = WebhookDelivery(store, SETTINGS, concurrency=4, poll_interval_seconds=0.2)
    await delivery.start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await delivery.aclose()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
