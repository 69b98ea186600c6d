"""Every key as ``BALANCES_<SECTION>__<KEY>``: the file's checks, errors naming the variable,
and ``balances config show`` with its secrets masked."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from service.errors import ConfigError
from service.settings import Settings, load_settings, parse_settings
from tests.support.cli import OFFLINE_CONFIG, SECRET, assert_one_line_error, balances_main

PASSWORD = "CANARY-db-password"
REDIS_PASSWORD = "CANARY-redis-password"
OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"


def _load(tmp_path: Path, environ: dict[str, str], text: str = OFFLINE_CONFIG) -> Settings:
    config = tmp_path / "balances.toml"
    config.write_text(text)
    return load_settings(config, environ=environ)


@pytest.fixture
def pems(tmp_path: Path) -> Path:
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path


# One case or more per section: (variables, what the settings must then say).
Check = Callable[[Settings], Any]
CASES: list[tuple[dict[str, str], Check]] = [
    ({"BALANCES_SERVER__LISTEN": "0.0.0.0:6001"}, lambda s: s.listen == "0.0.0.0:6001"),
    ({"BALANCES_SERVER__GRACE_PERIOD_SECONDS": "2.5"}, lambda s: s.grace_period_seconds == 2.5),
    (
        {"BALANCES_REST__LISTEN": "127.0.0.1:8181"},
        lambda s: s.rest and s.rest.listen.endswith("8181"),
    ),
    (
        {"BALANCES_REST__LISTEN": "127.0.0.1:8181", "BALANCES_REST__MAX_BODY_BYTES": "2048"},
        lambda s: s.rest and s.rest.limits.max_body_bytes == 2048,
    ),
    ({"BALANCES_CACHE__TTL_SECONDS": "45"}, lambda s: s.cache_ttl_seconds == 45),
    ({"BALANCES_CACHE__MAX_ENTRIES": "10"}, lambda s: s.cache_max_entries == 10),
    (
        {"BALANCES_CACHE__REDIS_URL": "redis://cache:6379/0"},
        lambda s: s.cache_redis_url == "redis://cache:6379/0",
    ),
    (
        {"BALANCES_DIRECTORY__PATH": "elsewhere.sqlite3"},
        lambda s: s.directory_path == Path("elsewhere.sqlite3"),
    ),
    (
        {"BALANCES_DIRECTORY__URL": "postgresql://app@db:5432/balances"},
        lambda s: s.directory_url == "postgresql://app@db:5432/balances",
    ),
    ({"BALANCES_CHAIN__RPC_TIMEOUT_SECONDS": "3"}, lambda s: s.rpc_timeout_seconds == 3),
    (
        {"BALANCES_CHAIN__MAX_CALLS_PER_BATCH": "100"},
        lambda s: all(n.max_calls_per_batch == 100 for n in s.networks),
    ),
    ({"BALANCES_CLUSTER__LEASE_SECONDS": "5"}, lambda s: s.cluster_lease_seconds == 5),
    ({"BALANCES_PRICING__BASE_CURRENCY": "EUR"}, lambda s: s.base_currency == "EUR"),
    ({"BALANCES_PRICING__MINOR_UNIT_DIGITS": "3"}, lambda s: s.minor_unit_digits == 3),
    (
        {"BALANCES_WATCH__POLL_INTERVAL_SECONDS": "0.5"},
        lambda s: s.watch.poll_interval_seconds == 0.5,
    ),
    (
        {"BALANCES_WEBHOOKS__ALLOW_HTTP_HOSTS": '["127.0.0.1:8099"]'},
        lambda s: s.webhooks.allow_http_hosts == ("127.0.0.1:8099",),
    ),
    ({"BALANCES_WEBHOOKS__TIMEOUT_SECONDS": "5"}, lambda s: s.webhooks.timeout_seconds == 5),
    (
        {"BALANCES_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[1, 2.5]"},
        lambda s: s.webhooks.retry_schedule_seconds == (1.0, 2.5),
    ),
    ({"BALANCES_LIMITS__REQUESTS_PER_SECOND": "10"}, lambda s: s.limits.requests_per_second == 10),
    (
        {"BALANCES_LIMITS__TENANTS__ACME__BURST": "7"},
        lambda s: "acme" in s.limits.tenants and s.limits.tenants["acme"].burst == 7,
    ),
    ({"BALANCES_LOGGING__FORMAT": "json"}, lambda s: s.logging.format == "json"),
    ({"BALANCES_LOGGING__ACCESS_LOG": "true"}, lambda s: s.logging.access_log is True),
    (
        {"BALANCES_METRICS__LISTEN": "127.0.0.1:9464"},
        lambda s: s.metrics_listen == "127.0.0.1:9464",
    ),
    ({"BALANCES_TRACING__SAMPLE_RATIO": "0.25"}, lambda s: s.tracing.sample_ratio == 0.25),
    (
        {"BALANCES_NETWORKS__0__RPC_URLS": '["https://a.example/v3/K", "https://b.example"]'},
        lambda s: s.networks[0].rpc_urls == ("https://a.example/v3/K", "https://b.example"),
    ),
    (
        {"BALANCES_NETWORKS__1__CONFIRMATIONS": "4"},
        lambda s: s.network("ethereum").confirmations == 4,
    ),
    (
        {"BALANCES_NETWORKS__0__WS_URL": "wss://a.example/ws"},
        lambda s: s.networks[0].ws_url == "wss://a.example/ws",
    ),
    (
        {"BALANCES_NETWORKS__0__TOKENS__0__PRICE__PEG": '"0.998"'},
        lambda s: str(s.networks[0].tokens[0].price.value) == "499/500",  # type: ignore[union-attr]
    ),
    (
        {"BALANCES_NETWORKS__0__TOKENS__0__PRICE": '{ peg = "2" }'},
        lambda s: s.networks[0].tokens[0].price.value == 2,  # type: ignore[union-attr]
    ),
    (
        {"BALANCES_NETWORKS__0__TOKENS__0__SYMBOL": "USDC.E"},
        lambda s: s.networks[0].tokens[0].currency == "USDC.E",
    ),
]


@pytest.mark.parametrize(
    ("environ", "check"), CASES, ids=lambda v: next(iter(v)) if isinstance(v, dict) else ""
)
def test_a_variable_sets_its_key(tmp_path: Path, environ: dict[str, str], check: Check) -> None:
    assert not check(_load(tmp_path, {}))  # the file alone says otherwise
    assert check(_load(tmp_path, environ))


def test_tls_files_and_secrets_from_files(tmp_path: Path, pems: Path) -> None:
    (tmp_path / "pg").write_text(PASSWORD + "\n")
    settings = _load(
        tmp_path,
        {
            "BALANCES_SERVER__TLS__CERT_FILE": str(pems / "server.pem"),
            "BALANCES_SERVER__TLS__KEY_FILE": str(pems / "server.key"),
            "BALANCES_SERVER__TLS__CLIENT_CA_FILE": str(pems / "ca.pem"),
            "BALANCES_REST__TLS__CERT_FILE": str(pems / "server.pem"),
            "BALANCES_REST__TLS__KEY_FILE": str(pems / "server.key"),
            "BALANCES_DIRECTORY__URL": "postgresql://app@db/balances",
            "BALANCES_DIRECTORY__PASSWORD_FILE": str(tmp_path / "pg"),
            "BALANCES_CACHE__REDIS_URL": "redis://cache/0",
            "BALANCES_CACHE__REDIS_PASSWORD": REDIS_PASSWORD,
        },
    )
    assert settings.tls is not None and settings.tls.client_ca_file == pems / "ca.pem"
    assert settings.rest is not None and settings.rest.tls is not None
    assert settings.directory_password == PASSWORD
    assert settings.directory_password_file == tmp_path / "pg"
    assert settings.cache_redis_password == REDIS_PASSWORD


def test_a_new_network_from_the_environment_alone(tmp_path: Path) -> None:
    new = {
        "BALANCES_NETWORKS__2__NAME": "base",
        "BALANCES_NETWORKS__2__CHAIN_ID": "8453",
        "BALANCES_NETWORKS__2__RPC_URLS": '["https://base.example/v2/K"]',
        "BALANCES_NETWORKS__2__TOKENS__0__SYMBOL": "ETH",
        "BALANCES_NETWORKS__2__TOKENS__0__NATIVE": "true",
        "BALANCES_NETWORKS__2__TOKENS__0__DECIMALS": "18",
        "BALANCES_NETWORKS__2__TOKENS__0__PRICE__PEG": '"3000"',
    }
    base = _load(tmp_path, new).network("base")
    assert base.chain_id == 8453 and base.tokens[0].is_native
    missing = {k: v for k, v in new.items() if not k.endswith("CHAIN_ID")}
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, missing)
    assert str(caught.value).startswith("BALANCES_NETWORKS__2__CHAIN_ID: is required")


@pytest.mark.parametrize(
    ("environ", "named", "reason"),
    [
        ({"BALANCES_SERVER__LISTEN": "nowhere"}, "BALANCES_SERVER__LISTEN", "HOST:PORT"),
        ({"BALANCES_CACHE__MAX_ENTRIES": "lots"}, "BALANCES_CACHE__MAX_ENTRIES", "integer"),
        ({"BALANCES_CACHE__MAX_ENTRIES": "0"}, "BALANCES_CACHE__MAX_ENTRIES", ""),
        ({"BALANCES_LOGGING__FORMAT": "xml"}, "BALANCES_LOGGING__FORMAT", "text, json"),
        ({"BALANCES_LOGGING__ACCESS_LOG": "yes"}, "BALANCES_LOGGING__ACCESS_LOG", "boolean"),
        (
            {"BALANCES_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "5, 30"},
            "BALANCES_WEBHOOKS__RETRY_SCHEDULE",
            "array",
        ),
        (
            {"BALANCES_NETWORKS__0__RPC_URLS": f'["https://ok.example", "ftp://x/{SECRET}"]'},
            "BALANCES_NETWORKS__0__RPC_URLS[1]",
            "http",
        ),
        ({"BALANCES_NETWORKS__0__NAME": "Polygon PoS"}, "BALANCES_NETWORKS__0__NAME", "lowercase"),
        (
            {"BALANCES_NETWORKS__0__TOKENS__0__PRICE__PEG": "1"},
            "BALANCES_NETWORKS__0__TOKENS__0__PRICE",
            "decimal string",
        ),
        ({"BALANCES_SERVR__LISTEN": "0.0.0.0:1"}, "BALANCES_SERVR", "unknown key"),
        ({"BALANCES_SERVER__LISTN": "0.0.0.0:1"}, "BALANCES_SERVER__LISTN", "unknown key"),
        ({"BALANCES_NETWORKS__5__NAME": "x"}, "BALANCES_NETWORKS__5__NAME", "a new one is index 2"),
        ({"BALANCES_NETWORKS__NAME": "x"}, "BALANCES_NETWORKS__NAME", "give an index"),
        (
            {"BALANCES_NETWORKS__0__RPC_URLS__0": "https://x"},
            "BALANCES_NETWORKS__0__RPC_URLS__0",
            "set it whole",
        ),
        ({"BALANCES_DIRECTORY__PATH__X": "1"}, "BALANCES_DIRECTORY__PATH__X", "not a table"),
        (
            {"BALANCES_SERVER____LISTEN": "x"},
            "BALANCES_SERVER____LISTEN",
            "BALANCES_<SECTION>__<KEY>",
        ),
    ],
)
def test_a_bad_variable_is_a_one_line_error_naming_it(
    tmp_path: Path, environ: dict[str, str], named: str, reason: str
) -> None:
    (tmp_path / "balances.toml").write_text(OFFLINE_CONFIG)
    code, out, err = balances_main("config", "show", cwd=tmp_path, env=environ)
    line = assert_one_line_error(code, err, named, reason)
    assert code == 2 and out == ""
    assert line.startswith(f"balances: configuration error: {named}")


def test_names_without_a_section_separator_are_not_keys(tmp_path: Path) -> None:
    settings = _load(
        tmp_path, {"BALANCES_LOG_LEVEL": "DEBUG", "BALANCES_LISTEN": "x", "OTHER__X": "1"}
    )
    assert settings.listen == Settings.listen  # type: ignore[attr-defined]


def test_passwords_are_read_as_before_never_as_keys(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        {
            "BALANCES_DIRECTORY__URL": "postgresql://app@db/balances",
            "BALANCES_DIRECTORY__PASSWORD": "12345",  # digits stay a string
        },
    )
    assert settings.directory_password == "12345"


def test_a_relative_path_from_a_variable_is_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    in_file = _load(config_dir, {})
    from_env = _load(config_dir, {"BALANCES_DIRECTORY__PATH": "data/w.sqlite3"})
    assert in_file.directory_path == config_dir / "wallets.sqlite3"
    assert from_env.directory_path == Path("data/w.sqlite3")


def test_parse_settings_without_environ_is_unchanged() -> None:
    doc = tomllib.loads(OFFLINE_CONFIG)
    assert parse_settings(doc, Path("/etc")) == parse_settings(doc, Path("/etc"), environ={})


def test_config_show_prints_the_effective_configuration_with_secrets_masked(
    tmp_path: Path,
) -> None:
    (tmp_path / "balances.toml").write_text(OFFLINE_CONFIG)
    (tmp_path / "pg").write_text(PASSWORD)
    environ = {
        "BALANCES_SERVER__LISTEN": "0.0.0.0:6001",
        "BALANCES_NETWORKS__0__WS_URL": f"wss://ws.example/{SECRET}",
        "BALANCES_DIRECTORY__URL": f"postgresql://app@db:5432/{SECRET}",
        "BALANCES_DIRECTORY__PASSWORD_FILE": str(tmp_path / "pg"),
        "BALANCES_CACHE__REDIS_URL": "redis://cache:6379/0",
        "BALANCES_CACHE__REDIS_PASSWORD": REDIS_PASSWORD,
    }
    code, out, err = balances_main("config", "show", cwd=tmp_path, env=environ)
    assert code == 0, err
    for canary in (SECRET, PASSWORD, REDIS_PASSWORD):
        assert canary not in out and canary not in err
    shown = tomllib.loads(out)
    assert shown["server"]["listen"] == "0.0.0.0:6001"
    assert shown["networks"][0]["rpc_urls"] == ["http://127.0.0.1:9/***"]
    assert shown["networks"][0]["ws_url"] == "wss://ws.example/***"
    assert shown["directory"]["url"] == "postgresql://db:5432/***"
    assert "# directory password: set (not shown)" in out
    assert "# cache (Redis) password: set (not shown)" in out


def _keys(table: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, value in table.items():
        if isinstance(value, dict) and name != "price":
            yield from _keys(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            yield from _keys(value[0], f"{prefix}{name}.0.")
        else:
            yield prefix + name


def test_every_key_config_show_prints_is_documented_as_a_variable(
    tmp_path: Path, pems: Path
) -> None:
    (tmp_path / "balances.toml").write_text(OFFLINE_CONFIG)
    environ = {
        "BALANCES_SERVER__TLS__CERT_FILE": str(pems / "server.pem"),
        "BALANCES_SERVER__TLS__KEY_FILE": str(pems / "server.key"),
        "BALANCES_SERVER__TLS__CLIENT_CA_FILE": str(pems / "ca.pem"),
        "BALANCES_REST__LISTEN": "127.0.0.1:8181",
        "BALANCES_NETWORKS__0__WS_URL": "wss://ws.example",
        "BALANCES_NETWORKS__0__TOKENS__0__ONCHAIN_SYMBOL": "USDC",
        "BALANCES_LIMITS__TENANTS__ACME__BURST": "7",
        "BALANCES_METRICS__LISTEN": "127.0.0.1:9464",
        "BALANCES_TRACING__OTLP_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
    }
    code, out, err = balances_main("config", "show", cwd=tmp_path, env=environ)
    assert code == 0, err
    documented = OPERATIONS.read_text()
    section = documented[documented.index("## Configuration from the environment") :]
    variables = re.findall(r"BALANCES_[A-Z0-9_<>]+", section)
    generic = [re.sub(r"<[A-Z]+>", "<X>", v) for v in variables]
    missing = []
    for key in _keys(tomllib.loads(out)):
        variable = "BALANCES_" + "__".join(part.upper() for part in key.split("."))
        shapes = {variable, re.sub(r"__\d+__", "__<X>__", variable)}
        shapes.add(variable.replace("__ACME__", "__<X>__"))
        if not shapes & (set(variables) | set(generic)):
            missing.append(variable)
    assert not missing, f"not in docs/operations.md: {missing}"
