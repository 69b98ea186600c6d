"""``[cache] redis_url`` and its password: never in the TOML, never echoed, rendered back."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest

from service.errors import ConfigError
from service.redact import RedactingFilter, Redactor
from service.settings import parse_settings
from service.settings.render import render_settings

SECRET = "s3cr3t-PASSWORD"
NETWORK = {
    "name": "polygon",
    "chain_id": 137,
    "rpc_urls": ["https://polygon.example.com"],
    "tokens": [
        {
            "symbol": "USDC",
            "address": "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359",
            "decimals": 6,
            "price": {"peg": "1"},
        }
    ],
}


def _doc(**cache: Any) -> dict[str, Any]:
    return {"cache": cache, "networks": [NETWORK]}


def test_no_redis_url_means_in_memory() -> None:
    settings = parse_settings(_doc(), Path("/etc"))
    assert settings.cache_redis_url is None and settings.cache_redis_password is None


def test_the_password_comes_from_the_environment(tmp_path: Path) -> None:
    settings = parse_settings(
        _doc(redis_url="redis://cache.internal:6379/2"),
        tmp_path,
        environ={"BALANCES_CACHE__REDIS_PASSWORD": SECRET},
    )
    assert settings.cache_redis_url == "redis://cache.internal:6379/2"
    assert settings.cache_redis_password == SECRET
    assert SECRET not in repr(settings)


def test_or_from_a_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "redis.pw").write_text(SECRET + "\n")
    settings = parse_settings(
        _doc(redis_url="rediss://cache.internal", redis_password_file="redis.pw"), tmp_path
    )
    assert settings.cache_redis_password == SECRET
    assert settings.cache_redis_password_file == tmp_path / "redis.pw"
    # Rendered back: the URL and the file, never the password itself.
    text = render_settings(settings)
    assert SECRET not in text
    assert parse_settings(tomllib.loads(text), Path("/elsewhere")) == settings


@pytest.mark.parametrize(
    ("cache", "environ", "key", "reason"),
    [
        ({"redis_url": f"redis://:{SECRET}@cache:6379/0"}, {}, "cache.redis_url", "password"),
        ({"redis_url": f"redis://app:{SECRET}@cache/0"}, {}, "cache.redis_url", "password"),
        ({"redis_url": f"redis://cache/0?password={SECRET}"}, {}, "cache.redis_url", "password"),
        ({"redis_url": f"https://{SECRET}.example.com"}, {}, "cache.redis_url", "redis://"),
        ({"redis_url": "redis://"}, {}, "cache.redis_url", "redis://"),
        ({"redis_url": f"redis://cache:{SECRET}/0"}, {}, "cache.redis_url", "redis://"),
        ({"redis_url": 6379}, {}, "cache.redis_url", "string"),
        ({"redis_password_file": "pw"}, {}, "cache.redis_password_file", "redis_url"),
        ({"redis_url": "redis://c", "redis_password_file": "missing"}, {}, "", "cannot read"),
        (
            {"redis_url": "redis://c", "redis_password_file": "pw"},
            {"BALANCES_CACHE__REDIS_PASSWORD": SECRET},
            "cache.redis_password_file",
            "both set",
        ),
        ({"redis_url": "redis://c", "redis_password": SECRET}, {}, "cache.redis_password", ""),
    ],
)
def test_bad_redis_settings_name_the_key_and_never_the_secret(
    tmp_path: Path, cache: dict[str, Any], environ: dict[str, str], key: str, reason: str
) -> None:
    (tmp_path / "pw").write_text(SECRET)
    with pytest.raises(ConfigError) as caught:
        parse_settings(_doc(**cache), tmp_path, environ=environ)
    assert caught.value.key.startswith(key or "cache.redis_password_file")
    assert reason in caught.value.reason
    assert SECRET not in str(caught.value)


def test_redis_urls_are_redacted_in_log_lines() -> None:
    redactor = Redactor([])
    line = redactor.redact("lost redis://user@cache.internal:6379/3 and rediss://c:6380/0")
    assert line == "lost redis://cache.internal:6379/*** and rediss://c:6380/***"
    record = logging.makeLogRecord({"msg": "using %s", "args": ("redis://app@cache:6379/5",)})
    RedactingFilter(Redactor(["redis://app@cache:6379/5"])).filter(record)
    assert record.getMessage() == "using redis://cache:6379/***"
