"""Naive web3: one ``eth_call`` per token per wallet, the way a first version would read.

For context only.  web3 is no dependency of the project: the bench runs this
file with the interpreter of its own tools venv (``.build/bench-tools``), and
skips it when web3 cannot be installed there.

    python naive_web3.py PLAN.json ROUNDS

PLAN.json: ``{"networks": {name: {"rpc_url", "tokens": {symbol: address}, "wallets": [...]}}}``.
Prints ``{"seconds": [...]}``: per round, the time to read every wallet's
every token (networks one after the other, calls one after the other).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from web3 import Web3

_ABI = [
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


def _read_all(plan: dict[str, Any], clients: dict[str, Any]) -> int:
    total = 0
    for name, network in plan["networks"].items():
        w3, contracts = clients[name]
        for wallet in network["wallets"]:
            for contract in contracts:
                total += contract.functions.balanceOf(wallet).call()
            total += w3.eth.get_balance(wallet)
    return total


def main() -> None:
    with open(sys.argv[1]) as plan_file:
        plan = json.load(plan_file)
    rounds = int(sys.argv[2])
    clients = {}
    for name, network in plan["networks"].items():
        w3 = Web3(Web3.HTTPProvider(network["rpc_url"]))
        contracts = [w3.eth.contract(address=a, abi=_ABI) for a in network["tokens"].values()]
        clients[name] = (w3, contracts)
    _read_all(plan, clients)  # warm: connections, ABI caches
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        _read_all(plan, clients)
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"seconds": seconds, "web3": __import__("web3").__version__}))


if __name__ == "__main__":
    main()
