"""Settings from TOML: typed values and defaults, and one clear error per bad file."""

from __future__ import annotations

import copy
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import trustme

from service.domain import FeedPrice, PegPrice
from service.errors import ConfigError
from service.settings import CANONICAL_MULTICALL3, TlsSettings, load_settings, parse_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]

USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
USDT = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
ETH_USD_FEED = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"
SECRET = "SECRET-PROVIDER-KEY"
SECRET_URL = f"https://mainnet.example.com/v3/{SECRET}"

VALID_TOML = f"""
[server]
listen = "0.0.0.0:6000"
grace_period_seconds = 2.5

[directory]
path = "data/wallets.sqlite3"

[[networks]]
name = "ethereum"
chain_id = 1
rpc_urls = ["{SECRET_URL}", "http://127.0.0.1:8545"]
confirmations = 3

[[networks.tokens]]
symbol = "USDC"
address = "{USDC.lower()}"
decimals = 6
price = {{ peg = "1" }}

[[networks.tokens]]
symbol = "ETH"
native = true
decimals = 18
price = {{ feed = "{ETH_USD_FEED}" }}

[[networks]]
name = "polygon"
chain_id = 137
rpc_urls = ["https://polygon.example.com"]
block_tag = "finalized"
multicall3 = "{USDT}"
max_calls_per_batch = 50

[[networks.tokens]]
symbol = "USDT"
address = "{USDT}"
decimals = 6
price = {{ peg = "0.998" }}
"""


def test_valid_config_parses_to_typed_values_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "balances.toml"
    path.write_text(VALID_TOML)
    settings = load_settings(path)

    assert settings.listen == "0.0.0.0:6000"
    assert settings.grace_period_seconds == 2.5
    assert settings.cache_ttl_seconds == 30  # default
    assert settings.rpc_timeout_seconds == 10  # default
    assert settings.directory_path == tmp_path / "data" / "wallets.sqlite3"  # relative to file
    assert (settings.base_currency, settings.minor_unit_digits) == ("USD", 2)
    assert [n.name for n in settings.networks] == ["ethereum", "polygon"]

    ethereum = settings.network("ethereum")
    assert ethereum.chain_id == 1
    assert ethereum.rpc_urls == (SECRET_URL, "http://127.0.0.1:8545")
    assert (ethereum.confirmations, ethereum.block_tag) == (3, "latest")
    assert ethereum.multicall3 == CANONICAL_MULTICALL3  # default
    assert ethereum.max_calls_per_batch == 1000  # default
    usdc, eth = ethereum.tokens
    assert (usdc.currency, usdc.decimals, usdc.address) == ("USDC", 6, USDC)  # checksummed
    assert not usdc.is_native
    assert usdc.price == PegPrice(Fraction(1))
    assert type(usdc.price.value) is Fraction
    assert (eth.currency, eth.decimals, eth.address, eth.is_native) == ("ETH", 18, None, True)
    assert eth.price == FeedPrice(address=ETH_USD_FEED, max_age_seconds=3600)  # default age

    polygon = settings.network("polygon")
    assert (polygon.confirmations, polygon.block_tag) == (0, "finalized")
    assert polygon.multicall3 == USDT
    assert polygon.max_calls_per_batch == 50
    assert polygon.tokens[0].price == PegPrice(Fraction(998, 1000))


def test_minimal_config_takes_every_default(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "networks": [
                {
                    "name": "local",
                    "chain_id": 31337,
                    "rpc_urls": ["http://127.0.0.1:8545"],
                    "tokens": [
                        {"symbol": "ETH", "native": True, "decimals": 18, "price": {"peg": "3000"}}
                    ],
                }
            ]
        },
        base_dir=tmp_path,
    )
    assert settings.listen == "127.0.0.1:50051"
    assert settings.grace_period_seconds == 10
    assert settings.cache_ttl_seconds == 30
    assert settings.directory_path == tmp_path / "balances.sqlite3"
    network = settings.networks[0]
    assert (network.confirmations, network.block_tag) == (0, "latest")
    assert network.multicall3 == CANONICAL_MULTICALL3


def _base() -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:50051"},
        "cache": {"ttl_seconds": 30},
        "pricing": {"base_currency": "USD"},
        "networks": [
            {
                "name": "ethereum",
                "chain_id": 1,
                "rpc_urls": [SECRET_URL],
                "tokens": [
                    {"symbol": "USDC", "address": USDC, "decimals": 6, "price": {"peg": "1"}},
                    {
                        "symbol": "ETH",
                        "native": True,
                        "decimals": 18,
                        "price": {"feed": ETH_USD_FEED, "max_age_seconds": 3600},
                    },
                ],
            },
            {
                "name": "polygon",
                "chain_id": 137,
                "rpc_urls": ["https://polygon.example.com"],
                "tokens": [
                    {"symbol": "USDT", "address": USDT, "decimals": 6, "price": {"peg": "1"}},
                ],
            },
        ],
    }


Edit = Callable[[dict[str, Any]], None]


def _net(doc: dict[str, Any]) -> dict[str, Any]:
    network: dict[str, Any] = doc["networks"][0]
    return network


def _tok(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    token: dict[str, Any] = _net(doc)["tokens"][i]
    return token


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], **values: Any) -> Edit:
    return lambda doc: getter(doc).update(values)


def _drop(getter: Callable[[dict[str, Any]], dict[str, Any]], name: str) -> Edit:
    return lambda doc: getter(doc).pop(name)


def _top(doc: dict[str, Any]) -> dict[str, Any]:
    return doc


def _server(doc: dict[str, Any]) -> dict[str, Any]:
    server: dict[str, Any] = doc["server"]
    return server


def _price(doc: dict[str, Any]) -> dict[str, Any]:
    price: dict[str, Any] = _tok(doc)["price"]
    return price


def _feed(doc: dict[str, Any]) -> dict[str, Any]:
    price: dict[str, Any] = _tok(doc, 1)["price"]
    return price


def _add_token(**token: Any) -> Edit:
    return lambda doc: _net(doc)["tokens"].append(token)


def _duplicate_network(doc: dict[str, Any]) -> None:
    doc["networks"][1]["name"] = "ethereum"


T0 = "networks[0].tokens[0]"
BAD_CONFIGS: list[tuple[str, Edit, str, str]] = [
    # (id, edit of a valid document, exact key, words the reason must contain)
    ("missing networks", _drop(_top, "networks"), "networks", "required"),
    ("empty networks", _set(_top, networks=[]), "networks", "at least one network"),
    ("networks not an array", _set(_top, networks={"name": "x"}), "networks", "array"),
    ("network not a table", _set(_top, networks=["ethereum"]), "networks[0]", "table"),
    ("unknown top-level key", _set(_top, servr={"listen": "x"}), "servr", "unknown key"),
    ("unknown server key", _set(_server, listne="127.0.0.1:1"), "server.listne", "unknown key"),
    ("unknown network key", _set(_net, confirmation=3), "networks[0].confirmation", "unknown key"),
    ("unknown token key", _set(_tok, decimal=6), f"{T0}.decimal", "unknown key"),
    ("unknown price key", _set(_price, pegg="1"), f"{T0}.price.pegg", "unknown key"),
    ("chain_id as string", _set(_net, chain_id="1"), "networks[0].chain_id", "integer"),
    ("chain_id as bool", _set(_net, chain_id=True), "networks[0].chain_id", "integer"),
    ("chain_id zero", _set(_net, chain_id=0), "networks[0].chain_id", "positive"),
    ("decimals as bool", _set(_tok, decimals=True), f"{T0}.decimals", "integer"),
    ("native as int", _set(_tok, native=1), f"{T0}.native", "boolean"),
    ("ttl as bool", lambda d: d["cache"].update(ttl_seconds=True), "cache.ttl_seconds", "positive"),
    ("ttl zero", lambda d: d["cache"].update(ttl_seconds=0), "cache.ttl_seconds", "positive"),
    (
        "ttl nan",
        lambda d: d["cache"].update(ttl_seconds=float("nan")),
        "cache.ttl_seconds",
        "positive",
    ),
    (
        "grace inf",
        _set(_server, grace_period_seconds=float("inf")),
        "server.grace_period_seconds",
        "positive",
    ),
    ("server not a table", _set(_top, server="127.0.0.1:1"), "server", "table"),
    ("listen without port", _set(_server, listen="localhost"), "server.listen", "HOST:PORT"),
    ("listen port too big", _set(_server, listen="127.0.0.1:65536"), "server.listen", "HOST:PORT"),
    ("listen without host", _set(_server, listen=":50051"), "server.listen", "HOST:PORT"),
    (
        "listen port not a number",
        _set(_server, listen="127.0.0.1:http"),
        "server.listen",
        "HOST:PORT",
    ),
    ("listen as integer", _set(_server, listen=50051), "server.listen", "string"),
    (
        "negative confirmations",
        _set(_net, confirmations=-1),
        "networks[0].confirmations",
        "0 or more",
    ),
    (
        "confirmations with block_tag",
        _set(_net, confirmations=2, block_tag="safe"),
        "networks[0].block_tag",
        "either confirmations or a block_tag",
    ),
    (
        "unknown block_tag",
        _set(_net, block_tag="pending"),
        "networks[0].block_tag",
        "latest, safe, finalized",
    ),
    ("rpc_urls missing", _drop(_net, "rpc_urls"), "networks[0].rpc_urls", "required"),
    ("rpc_urls empty", _set(_net, rpc_urls=[]), "networks[0].rpc_urls", "at least one URL"),
    ("rpc_urls a string", _set(_net, rpc_urls=SECRET_URL), "networks[0].rpc_urls", "array"),
    (
        "rpc_url not http",
        _set(_net, rpc_urls=[f"wss://host/v3/{SECRET}"]),
        "networks[0].rpc_urls[0]",
        "http",
    ),
    (
        "rpc_url without host",
        _set(_net, rpc_urls=[SECRET_URL, f"https:///{SECRET}"]),
        "networks[0].rpc_urls[1]",
        "http",
    ),
    ("rpc_url not a string", _set(_net, rpc_urls=[8545]), "networks[0].rpc_urls[0]", "string"),
    ("address too short", _set(_tok, address="0x1234"), f"{T0}.address", "40 hex digits"),
    ("address not hex", _set(_tok, address="0x" + "g" * 40), f"{T0}.address", "40 hex digits"),
    (
        "address bad checksum",
        _set(_tok, address="0xa0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"),
        f"{T0}.address",
        "EIP-55",
    ),
    (
        "multicall3 bad checksum",
        _set(_net, multicall3="0xCa11bde05977b3631167028862bE2a173976CA11"),
        "networks[0].multicall3",
        "EIP-55",
    ),
    ("feed bad address", _set(_feed, feed="0xnope"), "networks[0].tokens[1].price.feed", "hex"),
    ("address and native", _set(_tok, native=True), f"{T0}.address", "either an address or native"),
    (
        "neither address nor native",
        _drop(_tok, "address"),
        f"{T0}.address",
        "either an address or native",
    ),
    (
        "two natives",
        _add_token(symbol="WETH", native=True, decimals=18, price={"peg": "1"}),
        "networks[0].tokens",
        "at most one token may be native",
    ),
    (
        "duplicate symbol",
        _add_token(symbol="USDC", address=USDT, decimals=6, price={"peg": "1"}),
        "networks[0].tokens[2].symbol",
        "duplicate symbol 'USDC'",
    ),
    ("no tokens", _set(_net, tokens=[]), "networks[0].tokens", "at least one token"),
    (
        "duplicate network name",
        _duplicate_network,
        "networks[1].name",
        "duplicate network name 'ethereum'",
    ),
    ("network name with spaces", _set(_net, name="Main net"), "networks[0].name", "lowercase"),
    ("decimals negative", _set(_tok, decimals=-1), f"{T0}.decimals", "between 0 and 255"),
    ("decimals too large", _set(_tok, decimals=256), f"{T0}.decimals", "between 0 and 255"),
    ("peg as float", _set(_price, peg=1.0), f"{T0}.price.peg", "never a float"),
    ("peg as integer", _set(_price, peg=1), f"{T0}.price.peg", "decimal string"),
    ("peg negative", _set(_price, peg="-1"), f"{T0}.price.peg", "decimal string"),
    ("peg exponent", _set(_price, peg="1e0"), f"{T0}.price.peg", "decimal string"),
    ("peg zero", _set(_price, peg="0.00"), f"{T0}.price.peg", "positive"),
    ("peg and feed", _set(_price, feed=ETH_USD_FEED), f"{T0}.price", "either peg"),
    ("neither peg nor feed", _drop(_price, "peg"), f"{T0}.price", "either peg"),
    ("no price at all", _drop(_tok, "price"), f"{T0}.price", "either peg"),
    (
        "max_age zero",
        _set(_feed, max_age_seconds=0),
        "networks[0].tokens[1].price.max_age_seconds",
        "positive",
    ),
    (
        "max_age negative",
        _set(_feed, max_age_seconds=-60),
        "networks[0].tokens[1].price.max_age_seconds",
        "positive",
    ),
    (
        "max_age as string",
        _set(_feed, max_age_seconds="3600"),
        "networks[0].tokens[1].price.max_age_seconds",
        "integer",
    ),
    (
        "base_currency lowercase",
        lambda d: d["pricing"].update(base_currency="usd"),
        "pricing.base_currency",
        "ISO 4217",
    ),
    (
        "base_currency too long",
        lambda d: d["pricing"].update(base_currency="USDC"),
        "pricing.base_currency",
        "ISO 4217",
    ),
    (
        "base_currency not a string",
        lambda d: d["pricing"].update(base_currency=840),
        "pricing.base_currency",
        "string",
    ),
    (
        "batch size too small",
        _set(_net, max_calls_per_batch=2),
        "networks[0].max_calls_per_batch",
        "between 3 and 1000",
    ),
]


def test_base_of_the_bad_configs_is_valid(tmp_path: Path) -> None:
    """Each bad config is this one with one edit, so each error is that edit's."""
    settings = parse_settings(_base(), base_dir=tmp_path)
    assert [n.name for n in settings.networks] == ["ethereum", "polygon"]


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config_names_the_key_and_the_reason(
    tmp_path: Path, edit: Edit, key: str, reason: str
) -> None:
    doc = copy.deepcopy(_base())
    edit(doc)
    with pytest.raises(ConfigError) as caught:
        parse_settings(doc, base_dir=tmp_path)
    error = caught.value
    assert error.key == key
    assert reason in error.reason
    assert str(error) == f"{key}: {error.reason}"
    assert "\n" not in str(error)
    assert SECRET not in str(error)


@pytest.mark.parametrize(
    "text",
    [
        # A URL with a provider key, in a file that is wrong in several ways.
        f'[[networks]]\nname = "ethereum"\nchain_id = 1\nrpc_urls = ["ftp://user:{SECRET}@host/{SECRET}"]\n',
        f'[[networks]]\nname = "ethereum"\nchain_id = 1\nrpc_urls = "https://host/v3/{SECRET}"\n',
        f'[[networks]]\nname = "ethereum"\nchain_id = "1"\nrpc_urls = ["https://host/v3/{SECRET}"]\n',
        f'[[networks]]\nname = "ethereum"\nchain_id = 1\nrpc_urls = ["https://host/v3/{SECRET}"\n',
        f'[[networks]]\nname = "ethereum"\nchain_id = 1\nrpc_urls = ["https://host/v3/{SECRET}", {SECRET}]\n',
        f'rpc_urls = "https://host/v3/{SECRET}\n',
    ],
    ids=[
        "ftp url",
        "url not in a list",
        "other key wrong",
        "unclosed array",
        "bare word",
        "unterminated",
    ],
)
def test_an_rpc_url_never_appears_in_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "balances.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert SECRET not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unreadable_and_invalid_toml_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(missing)
    assert caught.value.key == str(missing)
    assert "cannot read" in caught.value.reason

    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(broken)
    assert caught.value.key == str(broken)
    assert "not valid TOML" in caught.value.reason


def test_example_config_loads() -> None:
    settings = load_settings(PROJECT_ROOT / "config" / "example.toml")
    assert {n.name for n in settings.networks} >= {"polygon", "ethereum"}
    assert settings.network("polygon").chain_id == 137
    assert settings.network("ethereum").chain_id == 1
    for network in settings.networks:
        symbols = {t.currency for t in network.tokens}
        assert {"USDC", "USDT"} <= symbols, network.name
        assert all(url.startswith("https://") for url in network.rpc_urls), network.name


# --- [server.tls] and [rest.tls]: files are read and parsed at start ---------------------


@pytest.fixture
def pem_dir(tmp_path: Path) -> Path:
    """PEM files beside the (virtual) config file in ``tmp_path``, made at test time."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    tls = tmp_path / "tls"
    tls.mkdir()
    server.cert_chain_pems[0].write_to_path(str(tls / "server.pem"))
    server.private_key_pem.write_to_path(str(tls / "server.key"))
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(tls / "other.key"))
    (tls / "garbage.pem").write_text("not a pem file\n")
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (tls / "encrypted.key").write_bytes(encrypted)
    return tmp_path


SERVER_TLS = {"cert_file": "tls/server.pem", "key_file": "tls/server.key"}


def test_tls_paths_are_relative_to_the_config_file(pem_dir: Path) -> None:
    path = pem_dir / "balances.toml"
    path.write_text(
        VALID_TOML.replace(
            "[directory]",
            '[server.tls]\ncert_file = "tls/server.pem"\nkey_file = "tls/server.key"\n'
            'client_ca_file = "tls/ca.pem"\n\n'
            '[rest]\n[rest.tls]\ncert_file = "tls/server.pem"\n'
            f'key_file = "{pem_dir / "tls" / "server.key"}"\n\n'  # absolute stays absolute
            "[directory]",
        )
    )
    settings = load_settings(path)
    assert settings.tls == TlsSettings(
        pem_dir / "tls" / "server.pem", pem_dir / "tls" / "server.key", pem_dir / "tls" / "ca.pem"
    )
    assert settings.rest is not None
    assert settings.rest.tls == TlsSettings(
        pem_dir / "tls" / "server.pem", pem_dir / "tls" / "server.key"
    )


def test_tls_is_off_unless_configured(tmp_path: Path) -> None:
    settings = parse_settings({**_base(), "rest": {}}, base_dir=tmp_path)
    assert settings.tls is None
    assert settings.rest is not None and settings.rest.tls is None


def _server_tls(**values: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc["server"]["tls"] = {k: v for k, v in {**SERVER_TLS, **values}.items() if v is not None}

    return edit


def _rest_tls(**values: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc["rest"] = {"tls": {k: v for k, v in {**SERVER_TLS, **values}.items() if v is not None}}

    return edit


BAD_TLS_CONFIGS: list[tuple[str, Edit, str, str]] = [
    ("server tls not a table", _set(_server, tls="on"), "server.tls", "table"),
    ("server tls empty", _set(_server, tls={}), "server.tls.cert_file", "required"),
    ("no key_file", _server_tls(key_file=None), "server.tls.key_file", "required"),
    ("no cert_file", _server_tls(cert_file=None), "server.tls.cert_file", "required"),
    ("cert_file not a string", _server_tls(cert_file=1), "server.tls.cert_file", "string"),
    ("cert_file empty", _server_tls(cert_file=""), "server.tls.cert_file", "path to a PEM"),
    (
        "cert_file missing",
        _server_tls(cert_file="tls/nope.pem"),
        "server.tls.cert_file",
        "cannot read",
    ),
    ("cert_file a directory", _server_tls(cert_file="tls"), "server.tls.cert_file", "cannot read"),
    ("cert_file NUL", _server_tls(cert_file="a\0b"), "server.tls.cert_file", "cannot read"),
    (
        "cert_file garbage",
        _server_tls(cert_file="tls/garbage.pem"),
        "server.tls.cert_file",
        "not a PEM certificate",
    ),
    (
        "cert_file is a key",
        _server_tls(cert_file="tls/server.key"),
        "server.tls.cert_file",
        "not a PEM certificate",
    ),
    (
        "key_file missing",
        _server_tls(key_file="tls/nope.key"),
        "server.tls.key_file",
        "cannot read",
    ),
    (
        "key_file garbage",
        _server_tls(key_file="tls/garbage.pem"),
        "server.tls.key_file",
        "not a PEM private key",
    ),
    (
        "key_file is a cert",
        _server_tls(key_file="tls/ca.pem"),
        "server.tls.key_file",
        "not a PEM private key",
    ),
    (
        "key_file of another cert",
        _server_tls(key_file="tls/other.key"),
        "server.tls.key_file",
        "matching cert_file",
    ),
    (
        "key_file encrypted",
        _server_tls(key_file="tls/encrypted.key"),
        "server.tls.key_file",
        "encrypted",
    ),
    (
        "client_ca missing",
        _server_tls(client_ca_file="tls/nope.pem"),
        "server.tls.client_ca_file",
        "cannot read",
    ),
    (
        "client_ca garbage",
        _server_tls(client_ca_file="tls/garbage.pem"),
        "server.tls.client_ca_file",
        "not a PEM certificate",
    ),
    (
        "client_ca a key",
        _server_tls(client_ca_file="tls/server.key"),
        "server.tls.client_ca_file",
        "not a PEM certificate",
    ),
    (
        "server tls unknown key",
        _server_tls(ca_file="tls/ca.pem"),
        "server.tls.ca_file",
        "unknown key",
    ),
    (
        "rest tls no mTLS",
        _rest_tls(client_ca_file="tls/ca.pem"),
        "rest.tls.client_ca_file",
        "unknown key",
    ),
    (
        "rest key garbage",
        _rest_tls(key_file="tls/garbage.pem"),
        "rest.tls.key_file",
        "not a PEM private key",
    ),
    ("rest cert missing", _rest_tls(cert_file="tls/nope.pem"), "rest.tls.cert_file", "cannot read"),
    ("rest no key_file", _rest_tls(key_file=None), "rest.tls.key_file", "required"),
]


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [case[1:] for case in BAD_TLS_CONFIGS],
    ids=[case[0] for case in BAD_TLS_CONFIGS],
)
def test_bad_tls_config_names_the_key_and_the_reason(
    pem_dir: Path, edit: Edit, key: str, reason: str
) -> None:
    doc = copy.deepcopy(_base())
    _server_tls()(doc)
    parse_settings(doc, base_dir=pem_dir)  # the valid base: each error is the edit's
    doc = copy.deepcopy(_base())
    edit(doc)
    with pytest.raises(ConfigError) as caught:
        parse_settings(doc, base_dir=pem_dir)
    error = caught.value
    assert (error.key, str(error)) == (key, f"{key}: {error.reason}")
    assert reason in error.reason
    assert "\n" not in str(error)
