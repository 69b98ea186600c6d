"""``[metrics] listen``: absent or empty means off, validated like the other listen keys."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from service import metrics
from service.errors import ConfigError
from service.settings import parse_settings
from service.settings.render import render_settings

NETWORK = {
    "name": "polygon",
    "chain_id": 137,
    "rpc_urls": ["https://polygon.example.com"],
    "tokens": [{"symbol": "POL", "native": True, "decimals": 18, "price": {"peg": "1"}}],
}


def _doc(**tables: Any) -> dict[str, Any]:
    return {**tables, "networks": [NETWORK]}


def test_absent_or_empty_means_off() -> None:
    assert parse_settings(_doc(), Path("/etc")).metrics_listen is None
    assert parse_settings(_doc(metrics={}), Path("/etc")).metrics_listen is None


def test_listen_is_read_and_rendered_back() -> None:
    settings = parse_settings(_doc(metrics={"listen": "127.0.0.1:9464"}), Path("/etc"))
    assert settings.metrics_listen == "127.0.0.1:9464"
    again = parse_settings(tomllib.loads(render_settings(settings)), Path("/etc"))
    assert again.metrics_listen == "127.0.0.1:9464"


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1:http", "127.0.0.1:70000", ":9464"])
def test_a_bad_listen_names_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics_listen|metrics\.listen"):
        parse_settings(_doc(metrics={"listen": listen}), Path("/etc"))


def test_a_listen_of_the_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_settings(_doc(metrics={"listen": 9464}), Path("/etc"))


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        parse_settings(_doc(metrics={"port": 9464}), Path("/etc"))


def test_the_revision_comes_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(metrics.REVISION_ENV_VAR, "0123abc")
    assert metrics.build_revision() == "0123abc"
    monkeypatch.delenv(metrics.REVISION_ENV_VAR)
    revision = metrics.build_revision()
    assert revision == "unknown" or len(revision) == 40
