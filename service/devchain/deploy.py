"""Set up dev-chain state over JSON-RPC: contracts, balances, feed answers, blocks.

Transactions are sent with ``eth_sendTransaction`` from anvil's first unlocked
dev account (the owner of every contract deployed here), and each helper waits
for the receipt, so its effect is visible when it returns. Every address
returned is EIP-55 checksummed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from service.devchain.compile import compile_contract
from service.devchain.rpc import rpc_call

__all__ = [
    "CANONICAL_MULTICALL3",
    "TransactionFailedError",
    "burn",
    "deploy_price_feed",
    "deploy_rebasing_token",
    "deploy_token",
    "dev_account",
    "mine",
    "mint",
    "mint_shares",
    "place_multicall3",
    "set_feed_answer",
    "set_feed_round",
    "set_native_balance",
    "set_rebase_index",
    "transfer",
]

_log = logging.getLogger(__name__)

CANONICAL_MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
_RECEIPT_TIMEOUT_SECONDS = 60.0
_GAS_TOP_UP_WEI = 10**18


class TransactionFailedError(RuntimeError):
    """A transaction was mined but reverted."""


def _calldata(signature: str, types: list[str], args: list[Any]) -> str:
    return "0x" + (keccak(text=signature)[:4] + encode(types, args)).hex()


async def dev_account(url: str, index: int = 0) -> str:
    """Return anvil's unlocked dev account ``index`` (checksummed)."""
    accounts: list[str] = await rpc_call(url, "eth_accounts")
    return to_checksum_address(accounts[index])


async def _send(url: str, tx: dict[str, Any]) -> dict[str, Any]:
    """Send ``tx`` (``from`` defaults to dev account 0) and return its successful receipt."""
    if "from" not in tx:
        tx = {"from": await dev_account(url), **tx}
    tx_hash: str = await rpc_call(url, "eth_sendTransaction", [tx])
    deadline = time.monotonic() + _RECEIPT_TIMEOUT_SECONDS
    while True:
        receipt: dict[str, Any] | None = await rpc_call(url, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no receipt for {tx_hash} after {_RECEIPT_TIMEOUT_SECONDS}s")
        await asyncio.sleep(0.05)
    if int(receipt["status"], 16) != 1:
        raise TransactionFailedError(f"transaction {tx_hash} reverted")
    return receipt


async def _deploy(url: str, name: str, types: list[str], args: list[Any]) -> str:
    data = compile_contract(name).bytecode + encode(types, args)
    receipt = await _send(url, {"data": "0x" + data.hex()})
    address = to_checksum_address(receipt["contractAddress"])
    _log.info("deployed %s at %s", name, address)
    return address


async def place_multicall3(url: str, address: str = CANONICAL_MULTICALL3) -> str:
    """Put the dev Multicall3 runtime code at ``address`` with ``anvil_setCode``."""
    code = compile_contract("Multicall3").runtime_bytecode_hex
    await rpc_call(url, "anvil_setCode", [address, code])
    return to_checksum_address(address)


async def deploy_token(url: str, name: str, symbol: str, decimals: int) -> str:
    """Deploy a Token.vy ERC-20 owned by dev account 0; return its address."""
    return await _deploy(url, "Token", ["string", "string", "uint8"], [name, symbol, decimals])


async def deploy_rebasing_token(url: str, name: str, symbol: str, decimals: int) -> str:
    """Deploy a RebasingToken.vy (index 1e18) owned by dev account 0; return its address."""
    return await _deploy(
        url, "RebasingToken", ["string", "string", "uint8"], [name, symbol, decimals]
    )


async def mint_shares(url: str, token: str, to: str, shares: int) -> None:
    """Mint ``shares`` of a rebasing ``token`` to ``to`` (balance = shares * index / 1e18)."""
    data = _calldata("mintShares(address,uint256)", ["address", "uint256"], [to, shares])
    await _send(url, {"to": token, "data": data})


async def set_rebase_index(url: str, token: str, index: int) -> None:
    """Set a rebasing token's index (1e18 = 1.0): every balance moves, no Transfer event."""
    data = _calldata("setIndex(uint256)", ["uint256"], [index])
    await _send(url, {"to": token, "data": data})


async def mint(url: str, token: str, to: str, amount: int) -> None:
    """Mint ``amount`` base units of ``token`` to ``to``."""
    data = _calldata("mint(address,uint256)", ["address", "uint256"], [to, amount])
    await _send(url, {"to": token, "data": data})


async def burn(url: str, token: str, holder: str, amount: int) -> None:
    """Burn ``amount`` base units of ``token`` from ``holder`` (no transfer involved)."""
    data = _calldata("burn(address,uint256)", ["address", "uint256"], [holder, amount])
    await _send(url, {"to": token, "data": data})


async def transfer(url: str, token: str, sender: str, to: str, amount: int) -> None:
    """Transfer ``amount`` of ``token`` from ``sender`` to ``to``.

    A sender that is not an unlocked dev account is impersonated for the one
    transaction; if it cannot pay for gas, its native balance is raised by
    1 ETH first (so its native balance changes).
    """
    sender = to_checksum_address(sender)
    data = _calldata("transfer(address,uint256)", ["address", "uint256"], [to, amount])
    accounts: list[str] = await rpc_call(url, "eth_accounts")
    if sender.lower() in {a.lower() for a in accounts}:
        await _send(url, {"from": sender, "to": token, "data": data})
        return
    balance = int(await rpc_call(url, "eth_getBalance", [sender, "latest"]), 16)
    if balance < _GAS_TOP_UP_WEI // 10:
        await set_native_balance(url, sender, balance + _GAS_TOP_UP_WEI)
    await rpc_call(url, "anvil_impersonateAccount", [sender])
    try:
        await _send(url, {"from": sender, "to": token, "data": data})
    finally:
        await rpc_call(url, "anvil_stopImpersonatingAccount", [sender])


async def deploy_price_feed(url: str, decimals: int, answer: int, description: str) -> str:
    """Deploy a PriceFeed.vy with a first round at the current block; return its address."""
    return await _deploy(
        url, "PriceFeed", ["uint8", "string", "int256"], [decimals, description, answer]
    )


async def set_feed_answer(url: str, feed: str, answer: int) -> None:
    """Start a new round on ``feed`` with ``answer``, updated at the mining block's time."""
    await _send(url, {"to": feed, "data": _calldata("setAnswer(int256)", ["int256"], [answer])})


async def set_feed_round(url: str, feed: str, answer: int, updated_at: int) -> None:
    """Start a new round on ``feed`` with an explicit ``updated_at`` (e.g. to make it stale)."""
    data = _calldata("setRoundData(int256,uint256)", ["int256", "uint256"], [answer, updated_at])
    await _send(url, {"to": feed, "data": data})


async def set_native_balance(url: str, address: str, wei: int) -> None:
    """Set the native balance of ``address`` to exactly ``wei``."""
    await rpc_call(url, "anvil_setBalance", [to_checksum_address(address), hex(wei)])


async def mine(url: str, blocks: int = 1) -> None:
    """Mine ``blocks`` empty blocks."""
    await rpc_call(url, "anvil_mine", [hex(blocks)])
