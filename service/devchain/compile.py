"""Compile the dev-chain Vyper contracts, cached in-process and on disk.

Compiling one contract costs about half a second, and tests and the demo ask
for the same contracts from many processes, so results are kept under
``<project>/.build/contracts/`` (or ``$DEVCHAIN_BUILD_DIR``) keyed by a hash of
the source, the vyper version and the target EVM version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CONTRACTS_DIR",
    "CONTRACT_NAMES",
    "MULTICALL3_MAX_CALLS",
    "CompiledContract",
    "compile_contract",
]

_log = logging.getLogger(__name__)

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
CONTRACT_NAMES = ("Multicall3", "PriceFeed", "RebasingToken", "Token")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]

MULTICALL3_MAX_CALLS = 1024
"""Most calls one ``aggregate3`` of the dev Multicall3 accepts (``MAX_CALLS`` in Multicall3.vy).

Bounds of the Vyper contract: each ``callData`` at most 132 bytes (selector and
four words; ``balanceOf``/``getEthBalance`` need 36), each ``returnData`` at most
256 bytes (``latestRoundData`` needs 160). A longer return counts as a failed
call, never a truncated one; more calls or longer callData revert the batch.

Measured with ``eth_estimateGas`` on anvil 1.7.1 (prague bytecode, vyper 0.4.3):
1,000 ``balanceOf`` calls for 1,000 distinct (cold) holders of one token cost
6,218,271 gas, all 1,024 cost 6,349,082, 1,024 ``latestRoundData`` 4,781,306 and
1,024 ``getEthBalance`` 6,796,118; an empty batch costs 819,913 (mostly memory
for the static bounds). All fit a 30M-gas ``eth_call`` with room to spare.
"""


@dataclass(frozen=True)
class CompiledContract:
    """ABI and bytecode of one compiled contract."""

    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: bytes
    runtime_bytecode: bytes

    @property
    def bytecode_hex(self) -> str:
        return "0x" + self.bytecode.hex()

    @property
    def runtime_bytecode_hex(self) -> str:
        return "0x" + self.runtime_bytecode.hex()


def _build_dir() -> Path:
    override = os.environ.get("DEVCHAIN_BUILD_DIR")
    return Path(override) if override else _PROJECT_ROOT / ".build" / "contracts"


def _cache_key(source: str) -> str:
    import vyper
    from vyper.evm.opcodes import DEFAULT_EVM_VERSION

    material = f"{vyper.__version__}\0{DEFAULT_EVM_VERSION}\0{source}".encode()
    return hashlib.sha256(material).hexdigest()[:32]


def _from_json(name: str, data: dict[str, Any]) -> CompiledContract:
    return CompiledContract(
        name=name,
        abi=tuple(data["abi"]),
        bytecode=bytes.fromhex(data["bytecode"].removeprefix("0x")),
        runtime_bytecode=bytes.fromhex(data["bytecode_runtime"].removeprefix("0x")),
    )


def _read_cached(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not {"abi", "bytecode", "bytecode_runtime"} <= data.keys():
        return None
    return data


def _write_cached(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a concurrent reader sees the whole file or none."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only checkout still works, just slower
        _log.warning("could not cache compiled contract at %s: %s", path, exc)


@functools.cache
def compile_contract(name: str) -> CompiledContract:
    """Return the compiled contract ``contracts/<name>.vy`` (e.g. ``"Token"``)."""
    if name not in CONTRACT_NAMES:
        raise ValueError(f"unknown contract {name!r}; expected one of {CONTRACT_NAMES}")
    source = (CONTRACTS_DIR / f"{name}.vy").read_text()
    cache_path = _build_dir() / f"{name}-{_cache_key(source)}.json"
    data = _read_cached(cache_path)
    if data is None:
        import vyper

        _log.info("compiling %s with vyper %s", name, vyper.__version__)
        out = vyper.compile_code(
            source,
            contract_path=f"{name}.vy",
            output_formats=["abi", "bytecode", "bytecode_runtime"],
        )
        data = {k: out[k] for k in ("abi", "bytecode", "bytecode_runtime")}
        _write_cached(cache_path, data)
    return _from_json(name, data)
