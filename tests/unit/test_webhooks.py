"""Webhooks without HTTP or a database server: signatures, URL rules, and SQLite's webhook
tables.  Configs, the emitter and the outbox run on SQLite and PostgreSQL in
tests/integration/test_webhook_store.py."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from standardwebhooks import Webhook, WebhookVerificationError

from service.domain import WebhookPolicy
from service.errors import InvalidArgument
from service.store.sqlite import SqliteStores, open_sqlite_stores
from service.store.sqlite.migrations import MIGRATIONS, schema_version
from service.webhooks.signing import new_secret, signature, signed_headers
from tests.support.resolvers import destinations

aio = pytest.mark.asyncio(loop_scope="session")

SETTINGS = WebhookPolicy(
    allow_http_hosts=("127.0.0.1:9000",), timeout_seconds=2.0, retry_schedule_seconds=(0.1, 0.2)
)
RULES = destinations(SETTINGS)  # names under example.com resolve to a public address
SECRET_RE = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")


@pytest_asyncio.fixture(loop_scope="session")
async def stores(tmp_path: Path) -> AsyncIterator[SqliteStores]:
    async with await open_sqlite_stores(tmp_path / "wallets.sqlite3") as opened:
        yield opened


# ---------------------------------------------------------------- signing


def test_secret_is_whsec_and_base64_of_32_random_bytes() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert SECRET_RE.fullmatch(secret), secret
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


def test_signature_verifies_with_the_independent_standardwebhooks_package() -> None:
    secret = new_secret()
    body = '{"type":"balance.updated","data":{"balance":"1.00"},"createdAt":1}'
    now = int(datetime.now(UTC).timestamp())
    headers = signed_headers(secret, "msg_abc", now, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("1.00", "2.00"), headers)
    # Deterministic, and every input is covered by the signature.
    assert signature(secret, "msg_abc", now, body) == headers["webhook-signature"]
    assert signature(secret, "msg_abd", now, body) != headers["webhook-signature"]
    assert signature(secret, "msg_abc", now + 1, body) != headers["webhook-signature"]


def test_signature_matches_the_specs_published_example() -> None:
    # The example from the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


# ---------------------------------------------------------------- URL rules


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in",
        "https://hooks.example.com:8443/in?x=1",
        "HTTPS://Hooks.Example.com/in",
        "http://127.0.0.1:9000/hook",  # the development receiver
    ],
)
def test_allowed_urls(url: str) -> None:
    RULES.check_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("http://hooks.example.com/in", "must use https"),
        ("http://localhost:9000/hook", "must use https"),  # 127.0.0.1:9000 is allowed
        ("http://127.0.0.1/hook", "must use https"),  # another port of that host
        ("http://127.0.0.1:9001/hook", "must use https"),
        ("ftp://hooks.example.com/in", "must use https"),
        ("hooks.example.com/in", "must use https"),
        ("https:///in", "no host"),
        ("https://user:pw@hooks.example.com/in", "user name or password"),
        ("https://user@hooks.example.com/in", "user name or password"),
        ("http://x@127.0.0.1:9000/hook", "user name or password"),
        ("https://hooks.example.com/in#frag", "fragment"),
        ("https://hooks.example.com:99999/in", "malformed"),
        ("https://hooks.example.com/a b", "printable ASCII"),
        ("https://hooks.example.com/\u00e9", "printable ASCII"),
        ("https://hooks.example.com/" + "a" * 2100, "longer than"),
    ],
)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as caught:
        RULES.check_url(url)
    if len(url) > 12:
        assert url not in str(caught.value)


# ---------------------------------------------------------------- SQLite's tables


@aio
async def test_migrations_add_webhook_and_follower_tables(
    stores: SqliteStores, tmp_path: Path
) -> None:
    assert await stores.database.schema_version() == len(MIGRATIONS) == 7
    with closing(sqlite3.connect(tmp_path / "wallets.sqlite3")) as connection:
        assert schema_version(connection) == 7
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"webhook_configs", "webhook_outbox", "follower_state"} <= tables
