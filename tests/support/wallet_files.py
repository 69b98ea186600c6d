"""Wallet import files for the directory tests: addresses, rows, JSON and CSV writers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

__all__ = [
    "ADDR_1",
    "ADDR_2",
    "ADDR_3",
    "ADDR_4",
    "ASSIGNED_ID",
    "BAD_CHECKSUM",
    "NETWORKS",
    "TENANT_A",
    "TENANT_B",
    "entry",
    "write_csv",
    "write_json",
]

NETWORKS = frozenset({"ethereum", "polygon"})
TENANT_A = "tenant-a"
TENANT_B = "tenant-b"

# Checksummed addresses (EIP-55) and their all-lowercase forms.
ADDR_1 = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0x9876543210987654321098765432109876543210"
ADDR_3 = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"
ADDR_4 = "0xCdCDCdCdcdcdcdCdcDcDCdcDcDCdCdcdCdcDCDcD"
# ADDR_1 with one letter's case flipped: mixed case, wrong checksum.
BAD_CHECKSUM = "0x742d35CC6634c0532925A3b844BC9E7595F0BEb0"

ASSIGNED_ID = re.compile(r"wal_[0-9a-f]{24}")


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def entry(
    customer_id: object = "cus_1", network: str = "ethereum", address: str = ADDR_1, **extra: Any
) -> dict[str, Any]:
    """One row of a JSON import file."""
    return {"customer_id": customer_id, "network": network, "address": address, **extra}
