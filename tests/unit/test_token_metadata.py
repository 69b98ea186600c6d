"""Token metadata checked at start: the symbol()/decimals() decoders, and ``ChainReader.prepare``
against a fake node (one Multicall3 snapshot, or a JSON-RPC batch without Multicall3).

The real-chain cases (``balances serve`` refusing to start) are in
tests/integration/test_provider_verification.py.
"""

from __future__ import annotations

import logging
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import decode, encode
from eth_utils.crypto import keccak

from service.chain.multicall import (
    AGGREGATE3,
    DECIMALS,
    GET_BLOCK_NUMBER,
    GET_CURRENT_BLOCK_TIMESTAMP,
    SYMBOL,
    decode_symbol,
    decode_uint,
)
from service.chain.providers import Endpoint, ProviderPolicy, ProviderPool, RpcError
from service.chain.reader import ChainReader
from service.errors import ChainUnavailable, ConfigError
from service.settings import NetworkSettings, PriceSettings, TokenSettings, parse_settings
from service.settings.render import render_settings

CHAIN_ID = 137
on_loop = pytest.mark.asyncio(loop_scope="session")
USDC = "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359"
USDT = "0xc2132D05D31c914a87C6611C10748AEb04B58e8F"
MKR = "0x9f8F72aA9304c8B593d555F12eF6589cC3A579A2"


def string(text: str) -> bytes:
    return encode(["string"], [text])


def bytes32(text: str) -> bytes:
    return text.encode().ljust(32, b"\0")


# --- decoders --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "symbol"),
    [
        pytest.param(string("USDC"), "USDC", id="string"),
        pytest.param(string("USDT0"), "USDT0", id="string-USDT0"),
        pytest.param(string("USD₮0"), "USD₮0", id="string-utf8"),
        pytest.param(string("USDC\0\0"), "USDC", id="string-zero-padded"),
        pytest.param(bytes32("MKR"), "MKR", id="bytes32-like-MKR"),
        pytest.param(bytes32("MKR") + bytes(32), None, id="two-words-not-a-string"),
        pytest.param(b"", None, id="nothing-no-code-or-no-function"),
        pytest.param(bytes(32), None, id="empty-bytes32"),
        pytest.param(string(""), None, id="empty-string"),
        pytest.param(bytes(64), None, id="pointer-to-nowhere"),
        pytest.param(b"\xff" * 32, None, id="not-utf8"),
        pytest.param(string("\x07bell"), None, id="not-printable"),
        pytest.param(string("X" * 65), None, id="too-long-for-a-label"),
        pytest.param(bytes(31) + b"\x20" + bytes(31) + b"\x40", None, id="length-past-the-end"),
        pytest.param(b"abc", None, id="short"),
    ],
)
def test_a_symbol_is_a_string_or_a_bytes32_or_nothing(data: bytes, symbol: str | None) -> None:
    assert decode_symbol(data) == symbol


def test_decimals_are_the_first_word() -> None:
    assert decode_uint(encode(["uint8"], [18])) == 18
    assert decode_uint(encode(["uint256", "uint256"], [6, 9])) == 6
    assert decode_uint(b"") is None
    assert decode_uint(b"\x12") is None


def test_the_selectors_are_the_erc20_ones() -> None:
    assert keccak(text="symbol()")[:4] == SYMBOL
    assert keccak(text="decimals()")[:4] == DECIMALS


# --- prepare against a fake node -------------------------------------------------------------


class FakeNode:
    """Answers what ``prepare`` asks: chain id, Multicall3 code, and each contract's
    ``decimals()``/``symbol()`` from ``contracts`` (address -> selector -> answer;
    None: the call reverts; an absent address has no code)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, multicall: bool = True) -> None:
        self.contracts: dict[str, dict[bytes, bytes | None]] = {}
        self.calls: Counter[str] = Counter()
        self.fail_first = False  # provider 1 answers garbage to eth_call

        async def request(endpoint: Endpoint, method: str, params: list[Any]) -> Any:
            self.calls[method] += 1
            if method == "eth_chainId":
                return hex(CHAIN_ID)
            if method == "eth_getCode":
                return "0x6001" if multicall else "0x"
            if method == "eth_blockNumber":
                return "0x64"
            if method == "eth_getBlockByNumber":
                return {"number": "0x64", "hash": "0x" + "ab" * 32, "timestamp": "0x10"}
            assert method == "eth_call", method
            if self.fail_first and endpoint.position == 0:
                return "0xZZ"
            data = bytes.fromhex(params[0]["data"][2:])
            assert data[:4] == AGGREGATE3
            (calls,) = decode(["(address,bool,bytes)[]"], data[4:])
            results = [self.answer(target, bytes(call)) for target, _, call in calls]
            return "0x" + encode(["(bool,bytes)[]"], [results]).hex()

        async def batch(endpoint: Endpoint, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
            self.calls["batch"] += 1
            answers: list[Any] = []
            for method, params in calls:
                assert method == "eth_call"
                ok, out = self.answer(params[0]["to"], bytes.fromhex(params[0]["data"][2:]))
                if ok:
                    answers.append("0x" + out.hex())
                else:
                    answers.append(RpcError(3, "execution reverted", "eth_call"))
            return answers

        monkeypatch.setattr(Endpoint, "request", request)
        monkeypatch.setattr(Endpoint, "batch", batch)

    def answer(self, target: str, call: bytes) -> tuple[bool, bytes]:
        if call == GET_BLOCK_NUMBER:
            return True, encode(["uint256"], [100])
        if call == GET_CURRENT_BLOCK_TIMESTAMP:
            return True, encode(["uint256"], [16])
        contract = self.contracts.get(target.lower())
        if contract is None:
            return True, b""  # no code: the call "succeeds" with nothing
        out = contract.get(call[:4])
        return (False, b"") if out is None else (True, out)

    def token(self, address: str, decimals: int, symbol: bytes | None) -> None:
        self.contracts[address.lower()] = {DECIMALS: encode(["uint8"], [decimals]), SYMBOL: symbol}


def network(*tokens: TokenSettings, urls: int = 1) -> NetworkSettings:
    native = TokenSettings(symbol="POL", native=True, decimals=18, price=PriceSettings(peg="1"))
    return NetworkSettings(
        name="polygon",
        chain_id=CHAIN_ID,
        rpc_urls=tuple(f"http://node{i}.invalid/v3/SECRET" for i in range(urls)),
        tokens=(native.token, *(t.token for t in tokens)),
        max_calls_per_batch=3,  # the check splits into several aggregate3, at one block
    )


def erc20(symbol: str, address: str, decimals: int = 6, **more: Any) -> TokenSettings:
    return TokenSettings(
        symbol=symbol, address=address, decimals=decimals, price=PriceSettings(peg="1"), **more
    )


async def prepare(settings: NetworkSettings) -> None:
    pool = ProviderPool(settings.name, settings.rpc_urls, ProviderPolicy(), chain_id=CHAIN_ID)
    try:
        await ChainReader(settings, pool, default_timeout=5).prepare()
    finally:
        await pool.aclose()


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    return FakeNode(monkeypatch)


@on_loop
async def test_matching_tokens_start(node: FakeNode) -> None:
    node.token(USDC, 6, string("USDC"))
    node.token(USDT, 6, string("USDT"))
    node.token(MKR, 18, bytes32("MKR"))
    await prepare(network(erc20("USDC", USDC), erc20("USDT", USDT), erc20("MKR", MKR, 18)))
    # One snapshot: 2 head calls and 6 reads in chunks of 3, all through aggregate3.
    assert node.calls["eth_call"] == 3


@on_loop
async def test_wrong_decimals_refuse_to_start_naming_the_token_and_both_values(
    node: FakeNode,
) -> None:
    node.token(USDC, 6, string("USDC"))
    node.token(USDT, 18, string("USDT"))
    with pytest.raises(ConfigError) as caught:
        await prepare(network(erc20("USDC", USDC), erc20("USDT", USDT)))
    assert caught.value.key == "networks.polygon.tokens[2].decimals"  # the native coin is [0]
    assert caught.value.reason == "the token contract says 18, the configuration says 6"


@on_loop
async def test_a_wrong_symbol_refuses_to_start_and_says_how_to_accept_it(node: FakeNode) -> None:
    node.token(USDT, 6, string("USDT0"))
    with pytest.raises(ConfigError) as caught:
        await prepare(network(erc20("USDT", USDT)))
    assert caught.value.key == "networks.polygon.tokens[1].symbol"
    assert caught.value.reason == (
        'the token contract\'s symbol is "USDT0", the configuration says "USDT"; '
        'set onchain_symbol = "USDT0" if the label is intended'
    )


@on_loop
async def test_onchain_symbol_is_what_the_contract_must_say(node: FakeNode) -> None:
    node.token(USDT, 6, string("USDT0"))
    await prepare(network(erc20("USDT", USDT, onchain_symbol="USDT0")))
    with pytest.raises(ConfigError) as caught:
        await prepare(network(erc20("USDT", USDT, onchain_symbol="USDT.e")))
    assert caught.value.key == "networks.polygon.tokens[1].onchain_symbol"
    assert caught.value.reason == (
        'the token contract\'s symbol is "USDT0", the configuration says "USDT.e"'
    )


@on_loop
async def test_a_bytes32_symbol_is_checked_too(node: FakeNode) -> None:
    node.token(MKR, 18, bytes32("MKR"))
    with pytest.raises(ConfigError, match='symbol is "MKR", the configuration says "MAKER"'):
        await prepare(network(erc20("MAKER", MKR, 18)))


@on_loop
async def test_a_symbol_that_reverts_or_is_junk_is_not_checked(node: FakeNode) -> None:
    node.token(USDC, 6, None)
    node.token(USDT, 6, b"\x01\x02")
    await prepare(network(erc20("USDC", USDC), erc20("USDT", USDT, onchain_symbol="X")))


@on_loop
async def test_a_token_without_a_contract_is_logged_not_refused(
    node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reads fail naming it (UNAVAILABLE), as the README's error table says."""
    caplog.set_level(logging.WARNING)
    await prepare(network(erc20("GHOST", USDC)))
    assert "GHOST" in caplog.text and "decimals() could not be read" in caplog.text


@on_loop
async def test_a_symbol_from_a_contract_is_escaped_in_the_message(node: FakeNode) -> None:
    node.token(USDT, 6, string('U"S\\DT'))
    with pytest.raises(ConfigError) as caught:
        await prepare(network(erc20("USDT", USDT)))
    assert 'symbol is "U\\"S\\\\DT"' in caught.value.reason
    assert "\n" not in str(caught.value)


@on_loop
async def test_without_multicall3_the_check_is_a_json_rpc_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = FakeNode(monkeypatch, multicall=False)
    node.token(USDT, 18, string("USDT"))
    with pytest.raises(ConfigError, match="says 18, the configuration says 6"):
        await prepare(network(erc20("USDT", USDT)))
    assert node.calls["batch"] == 1 and node.calls["eth_call"] == 0


@on_loop
async def test_a_faulty_provider_during_the_check_fails_over(node: FakeNode) -> None:
    node.token(USDT, 18, string("USDT"))
    node.fail_first = True
    with pytest.raises(ConfigError, match="says 18"):
        await prepare(network(erc20("USDT", USDT), urls=2))


@on_loop
async def test_no_provider_answering_the_check_fails_naming_the_network(node: FakeNode) -> None:
    node.token(USDT, 6, string("USDT"))
    node.fail_first = True
    with pytest.raises(ChainUnavailable) as caught:
        await prepare(network(erc20("USDT", USDT)))
    assert "polygon" in str(caught.value) and "SECRET" not in str(caught.value)


@on_loop
async def test_a_native_coin_has_nothing_to_check(node: FakeNode) -> None:
    await prepare(network())
    assert node.calls["eth_call"] == 0


def test_onchain_symbol_is_only_for_tokens_with_an_address() -> None:
    with pytest.raises(ConfigError) as caught:
        TokenSettings(
            symbol="POL", native=True, decimals=18, price=PriceSettings(peg="1"), onchain_symbol="X"
        )
    assert caught.value.key == "onchain_symbol"
    with pytest.raises(ConfigError, match="printable"):
        erc20("USDT", USDT, onchain_symbol="")
    with pytest.raises(ConfigError, match="printable"):
        erc20("USDT", USDT, onchain_symbol="a\nb")


def test_onchain_symbol_is_read_from_toml_and_rendered_back(tmp_path: Path) -> None:
    text = f"""
[[networks]]
name = "polygon"
chain_id = 137
rpc_urls = ["http://node.invalid"]

[[networks.tokens]]
symbol = "USDT"
address = "{USDT}"
decimals = 6
onchain_symbol = "USD₮0"
price = {{ peg = "1" }}
"""
    settings = parse_settings(tomllib.loads(text), base_dir=tmp_path)
    assert settings.networks[0].tokens[0].onchain_symbol == "USD₮0"
    assert settings.networks[0].tokens[0].currency == "USDT"
    rendered = render_settings(settings)
    assert 'onchain_symbol = "USD\\u20ae0"' in rendered  # TOML's escape of ₮
    assert parse_settings(tomllib.loads(rendered), base_dir=tmp_path) == settings
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(text.replace('"USD₮0"', "7")), base_dir=tmp_path)
    assert caught.value.key == "networks[0].tokens[0].onchain_symbol"
