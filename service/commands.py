"""The CLI's store commands: import wallets, manage API keys, migrate, replay webhooks.

Each opens (and so migrates) the configured database, does one thing and
returns the lines to print; only ``service.cli`` prints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from service.auth.keys import new_api_key
from service.domain import parse_tenant
from service.errors import InvalidArgument
from service.importfile import import_wallet_file
from service.records import ApiKeyRecord
from service.settings import Settings
from service.store.stores import directory_name, open_stores
from service.webhooks.destinations import WebhookDestinations
from service.webhooks.http_sender import SystemResolver
from service.webhooks.manage import WebhookManagement

__all__ = [
    "CreatedKey",
    "create_key",
    "import_wallets",
    "list_keys",
    "migrate",
    "parse_since",
    "replay_webhooks",
    "revoke_key",
    "shown_time",
]


async def import_wallets(settings: Settings, file: Path, tenant: str) -> str:
    parse_tenant(tenant)
    networks = [n.name for n in settings.networks]
    async with await open_stores(settings) as stores:
        wallets = await import_wallet_file(stores.wallets, file, tenant, networks)
    return f"imported {len(wallets)} wallets into {directory_name(settings)}"


class CreatedKey:
    """A new key: ``plaintext`` goes to stdout once, ``note`` to stderr."""

    def __init__(self, plaintext: str, record: ApiKeyRecord) -> None:
        self.plaintext = plaintext
        self.note = (
            f"created API key {record.key_id} for tenant {record.tenant};"
            " it is shown only this once: store it now"
        )


async def create_key(settings: Settings, tenant: str) -> CreatedKey:
    parse_tenant(tenant)
    key = new_api_key()
    async with await open_stores(settings) as stores:
        record = await stores.api_keys.add_key(key.key_id, tenant, key.digest)
    return CreatedKey(key.plaintext, record)


async def revoke_key(settings: Settings, key_id: str) -> str:
    async with await open_stores(settings) as stores:
        record = await stores.api_keys.revoke_key(key_id)
    assert record.revoked_at is not None
    return (
        f"revoked API key {record.key_id} of tenant {record.tenant}"
        f" (at {shown_time(record.revoked_at)})"
    )


async def list_keys(settings: Settings, tenant: str | None) -> list[str]:
    if tenant is not None:
        parse_tenant(tenant)
    async with await open_stores(settings) as stores:
        records = await stores.api_keys.list_keys(tenant)
    rows = [("KEY ID", "TENANT", "CREATED", "REVOKED")] + [
        (
            r.key_id,
            r.tenant,
            shown_time(r.created_at),
            "-" if r.revoked_at is None else shown_time(r.revoked_at),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


async def migrate(settings: Settings) -> str:
    async with await open_stores(settings) as stores:
        version = await stores.database.schema_version()
    return f"wallet directory {directory_name(settings)} is at schema version {version}"


async def replay_webhooks(settings: Settings, tenant: str | None, since: datetime) -> str:
    if tenant is not None:
        parse_tenant(tenant)
    async with await open_stores(settings) as stores:
        rules = WebhookDestinations(settings.webhooks.policy, SystemResolver())  # unused here
        management = WebhookManagement(stores.webhooks, rules)
        count = await management.replay(tenant, since)
    whose = "" if tenant is None else f" of tenant {tenant}"
    return f"requeued {count} webhook events{whose} created since {shown_time(since)}"


def parse_since(text: str) -> datetime:
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"--since {text[:40]!r} is not an ISO 8601 time like 2024-01-15T10:30:00Z"
        ) from None
    if since.tzinfo is None:
        raise InvalidArgument("--since needs a time zone, e.g. 2024-01-15T10:30:00Z")
    return since


def shown_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
