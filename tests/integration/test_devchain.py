"""The dev chain kit: Vyper contracts, anvil lifecycle, deploy helpers, Multicall3 reads."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_abi.abi import decode, encode
from eth_utils.address import is_checksum_address, to_checksum_address
from eth_utils.crypto import keccak

from service.devchain import compile as devcompile
from service.devchain import deploy
from service.devchain.anvil import (
    AnvilFactory,
    AnvilNode,
    AnvilNotFoundError,
    AnvilStartError,
    find_anvil,
)
from service.devchain.compile import MULTICALL3_MAX_CALLS, compile_contract
from service.devchain.deploy import CANONICAL_MULTICALL3
from service.devchain.rpc import DevChainRpcError, rpc_call

_log = logging.getLogger(__name__)

MULTICALL = CANONICAL_MULTICALL3
CALL3_ARRAY = "(address,bool,bytes)[]"
RESULT_ARRAY = "(bool,bytes)[]"
ROUND_DATA = ["uint80", "int256", "uint256", "uint256", "uint80"]
GAS_CAP = 30_000_000

Call3 = tuple[str, bool, bytes]


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def calldata(
    signature: str, types: list[str] | None = None, args: list[Any] | None = None
) -> bytes:
    return selector(signature) + (encode(types, args or []) if types else b"")


def balance_of(holder: str) -> bytes:
    return calldata("balanceOf(address)", ["address"], [holder])


def aggregate3_payload(calls: list[Call3]) -> str:
    return "0x" + (selector(f"aggregate3({CALL3_ARRAY})") + encode([CALL3_ARRAY], [calls])).hex()


def new_address() -> str:
    return to_checksum_address(os.urandom(20))


def uint(data: bytes) -> int:
    value: int = decode(["uint256"], data)[0]
    return value


async def aggregate3(
    url: str, calls: list[Call3], block: str = "latest"
) -> list[tuple[bool, bytes]]:
    tx = {"to": MULTICALL, "data": aggregate3_payload(calls), "gas": hex(GAS_CAP)}
    out: str = await rpc_call(url, "eth_call", [tx, block])
    results: list[tuple[bool, bytes]] = list(decode([RESULT_ARRAY], bytes.fromhex(out[2:]))[0])
    return results


async def token_balance(url: str, token: str, holder: str) -> int:
    out = await rpc_call(
        url, "eth_call", [{"to": token, "data": "0x" + balance_of(holder).hex()}, "latest"]
    )
    return uint(bytes.fromhex(out[2:]))


# --- compile --------------------------------------------------------------------------------


def test_multicall3_selectors_match_canonical() -> None:
    abi = compile_contract("Multicall3").abi
    names = {f["name"] for f in abi if f["type"] == "function"}
    assert names == {"aggregate3", "getEthBalance", "getBlockNumber", "getCurrentBlockTimestamp"}
    assert selector(f"aggregate3({CALL3_ARRAY})").hex() == "82ad56cb"
    assert selector("getEthBalance(address)").hex() == "4d2301cc"
    assert selector("getBlockNumber()").hex() == "42cbb15c"
    assert selector("getCurrentBlockTimestamp()").hex() == "0f28c97d"
    (agg,) = (f for f in abi if f["name"] == "aggregate3")
    assert [c["type"] for c in agg["inputs"][0]["components"]] == ["address", "bool", "bytes"]
    assert [c["type"] for c in agg["outputs"][0]["components"]] == ["bool", "bytes"]


def test_max_calls_constant_matches_the_contract() -> None:
    source = (devcompile.CONTRACTS_DIR / "Multicall3.vy").read_text()
    assert f"MAX_CALLS: constant(uint256) = {MULTICALL3_MAX_CALLS}\n" in source


def test_compile_is_cached_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVCHAIN_BUILD_DIR", str(tmp_path))
    compile_contract.cache_clear()
    try:
        first = compile_contract("PriceFeed")
        (cached,) = tmp_path.glob("PriceFeed-*.json")
        compile_contract.cache_clear()
        assert compile_contract("PriceFeed") == first  # read back from disk
        assert first.bytecode and first.runtime_bytecode
        assert first.bytecode_hex == "0x" + first.bytecode.hex()
        assert cached.stat().st_size > 0
    finally:
        compile_contract.cache_clear()
    with pytest.raises(ValueError, match="unknown contract"):
        devcompile.compile_contract("Nope")


# --- anvil ----------------------------------------------------------------------------------


def test_find_anvil_reports_a_bad_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANVIL_BIN", "/nonexistent/anvil")
    with pytest.raises(AnvilNotFoundError, match="ANVIL_BIN"):
        find_anvil()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.asyncio
async def test_anvil_stops_and_comes_back_with_its_state(start_anvil: AnvilFactory) -> None:
    async with start_anvil(137) as node:
        assert await rpc_call(node.url, "eth_chainId") == "0x89"
        await deploy.place_multicall3(node.url)
        await deploy.mine(node.url, 3)
        url, pid = node.url, node.pid
        assert pid is not None

        await node.stop()
        assert not node.running and not _process_exists(pid)
        with pytest.raises(aiohttp.ClientConnectionError):
            await rpc_call(url, "eth_chainId")

        await node.start()
        assert node.url == url
        assert await rpc_call(url, "eth_blockNumber") == "0x3"
        code = await rpc_call(url, "eth_getCode", [MULTICALL, "latest"])
        assert len(code) > 2
        pid = node.pid
    assert pid is not None and not _process_exists(pid)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_a_taken_port_is_a_clear_start_error(anvil: AnvilNode) -> None:
    with pytest.raises(AnvilStartError, match="in use"):
        async with AnvilNode(31337, port=anvil.port):
            pass


@pytest.mark.integration
@pytest.mark.asyncio
async def test_helpers_wait_for_interval_mining(start_anvil: AnvilFactory) -> None:
    async with start_anvil(10, block_time=0.2) as node:
        token = await deploy.deploy_token(node.url, "Tether", "USDT", 6)
        holder = new_address()
        await deploy.mint(node.url, token, holder, 5)
        assert await token_balance(node.url, token, holder) == 5


# --- deploy helpers -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.asyncio
async def test_token_helpers_move_balances(anvil: AnvilNode) -> None:
    url = anvil.url
    token = await deploy.deploy_token(url, "USD Coin", "USDC", 6)
    assert is_checksum_address(token)
    owner = await deploy.dev_account(url)
    outsider, receiver = new_address(), new_address()

    await deploy.mint(url, token, owner, 1_000)
    await deploy.transfer(url, token, owner, outsider, 300)
    await deploy.transfer(url, token, outsider, receiver, 100)  # impersonated, gas funded
    await deploy.burn(url, token, receiver, 40)

    assert await token_balance(url, token, owner) == 700
    assert await token_balance(url, token, outsider) == 200
    assert await token_balance(url, token, receiver) == 60
    supply = await rpc_call(url, "eth_call", [{"to": token, "data": "0x18160ddd"}, "latest"])
    assert int(supply, 16) == 960


@pytest.mark.integration
@pytest.mark.asyncio
async def test_native_balance_and_mining(anvil: AnvilNode) -> None:
    url, who = anvil.url, new_address()
    await deploy.set_native_balance(url, who, 12_345)
    assert await rpc_call(url, "eth_getBalance", [who, "latest"]) == hex(12_345)
    before = int(await rpc_call(url, "eth_blockNumber"), 16)
    await deploy.mine(url, 4)
    assert int(await rpc_call(url, "eth_blockNumber"), 16) == before + 4


# --- Multicall3 -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.asyncio
async def test_aggregate3_reads_one_consistent_snapshot(anvil: AnvilNode) -> None:
    url = anvil.url
    token = await deploy.deploy_token(url, "USD Coin", "USDC", 6)
    feed = await deploy.deploy_price_feed(url, 8, 2_000_12345678, "ETH / USD")
    deploy_block = await rpc_call(url, "eth_getBlockByNumber", ["latest", False])
    alice, bob, nobody = new_address(), new_address(), new_address()
    await deploy.mint(url, token, alice, 1_250_500_000)
    await deploy.mint(url, token, bob, 2**256 - 1 - 1_250_500_000)
    await deploy.set_native_balance(url, alice, 10**18 + 1)
    await deploy.mine(url, 2)

    block = await rpc_call(url, "eth_getBlockByNumber", ["latest", False])
    results = await aggregate3(
        url,
        [
            (token, False, balance_of(alice)),
            (token, False, balance_of(bob)),
            (MULTICALL, False, calldata("getEthBalance(address)", ["address"], [alice])),
            (MULTICALL, False, calldata("getBlockNumber()")),
            (MULTICALL, False, calldata("getCurrentBlockTimestamp()")),
            (nobody, False, balance_of(alice)),  # no code there: success, empty return
            (feed, False, calldata("latestRoundData()")),
        ],
        block=block["number"],
    )

    assert all(ok for ok, _ in results)
    data = [ret for _, ret in results]
    assert uint(data[0]) == 1_250_500_000
    assert uint(data[1]) == 2**256 - 1 - 1_250_500_000
    assert uint(data[2]) == 10**18 + 1
    assert uint(data[3]) == int(block["number"], 16)
    assert uint(data[4]) == int(block["timestamp"], 16)
    assert data[5] == b""
    deployed_at = int(deploy_block["timestamp"], 16)
    assert decode(ROUND_DATA, data[6]) == (1, 2_000_12345678, deployed_at, deployed_at, 1)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_price_feed_rounds(anvil: AnvilNode) -> None:
    url = anvil.url
    feed = await deploy.deploy_price_feed(url, 8, 100_000_000, "USDC / USD")
    await deploy.set_feed_round(url, feed, 99_990_000, updated_at=1_000)
    raw = await rpc_call(url, "eth_call", [{"to": feed, "data": "0xfeaf968c"}, "latest"])
    assert decode(ROUND_DATA, bytes.fromhex(raw[2:])) == (2, 99_990_000, 1_000, 1_000, 2)

    await deploy.set_feed_answer(url, feed, -5)
    block = await rpc_call(url, "eth_getBlockByNumber", ["latest", False])
    raw = await rpc_call(url, "eth_call", [{"to": feed, "data": "0xfeaf968c"}, "latest"])
    now = int(block["timestamp"], 16)
    assert decode(ROUND_DATA, bytes.fromhex(raw[2:])) == (3, -5, now, now, 3)
    decimals = await rpc_call(url, "eth_call", [{"to": feed, "data": "0x313ce567"}, "latest"])
    assert int(decimals, 16) == 8


@pytest.mark.integration
@pytest.mark.asyncio
async def test_aggregate3_failures(anvil: AnvilNode) -> None:
    url = anvil.url
    feed = await deploy.deploy_price_feed(url, 8, 1, "X / USD")
    reverting: Call3 = (feed, True, balance_of(new_address()))  # no such function on a feed
    # The modexp precompile returns as many bytes as the modulus length it is given.
    modexp = to_checksum_address("0x" + "05".rjust(40, "0"))
    too_long: Call3 = (modexp, True, encode(["uint256"] * 3, [0, 0, 300]))

    fits: Call3 = (modexp, True, encode(["uint256"] * 3, [0, 0, 256]))
    results = await aggregate3(url, [reverting, too_long, fits])
    assert results == [(False, b""), (False, b""), (True, bytes(256))]

    with pytest.raises(DevChainRpcError, match="Multicall3: call failed"):
        await aggregate3(url, [(feed, False, reverting[2])])


@pytest.mark.integration
@pytest.mark.asyncio
async def test_a_thousand_balance_reads_fit_one_call(anvil: AnvilNode) -> None:
    url = anvil.url
    token = await deploy.deploy_token(url, "Wrapped Ether", "WETH", 18)
    holders = [new_address() for _ in range(1000)]
    await deploy.mint(url, token, holders[-1], 7)
    calls: list[Call3] = [(token, False, balance_of(h)) for h in holders]
    payload = aggregate3_payload(calls)

    gas = int(await rpc_call(url, "eth_estimateGas", [{"to": MULTICALL, "data": payload}]), 16)
    _log.info("aggregate3 of 1000 balanceOf: %d gas", gas)
    assert gas < GAS_CAP

    results = await aggregate3(url, calls)
    assert len(results) == 1000
    assert [uint(ret) for _, ret in results] == [0] * 999 + [7]


@pytest.mark.integration
@pytest.mark.asyncio
async def test_max_calls_is_the_contract_bound(anvil: AnvilNode) -> None:
    url = anvil.url
    feed = await deploy.deploy_price_feed(url, 8, 1, "Y / USD")
    widest: Call3 = (feed, False, calldata("latestRoundData()"))  # 160-byte return
    full = [widest] * MULTICALL3_MAX_CALLS
    gas = int(
        await rpc_call(
            url, "eth_estimateGas", [{"to": MULTICALL, "data": aggregate3_payload(full)}]
        ),
        16,
    )
    assert gas < GAS_CAP
    assert len(await aggregate3(url, full)) == MULTICALL3_MAX_CALLS
    with pytest.raises(DevChainRpcError):
        await aggregate3(url, [*full, widest])
