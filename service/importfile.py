"""Wallet import files (.json, .csv): read and validate every row, then import atomically.

Formats:

* JSON: a list of objects, or ``{"wallets": [...]}``; each object has
  ``customer_id``, ``network``, ``address`` and optionally ``wallet_id``.
  Row N is the N-th object of the list (1-based).
* CSV (UTF-8, optional BOM): a header row naming the columns
  ``customer_id``, ``network``, ``address`` and optionally ``wallet_id``, in
  any order.  Row N is the N-th *data* row, not counting the header: for a
  file without quoted line breaks, row N is on line N + 1.  Blank lines are
  skipped but still counted, so that this stays true.

An absent, null or empty ``wallet_id`` lets the directory assign one.  Values
are taken exactly as written (no whitespace trimming).  Any problem raises
``ImportRejected``: with the row number and the field for a bad row, without a
row for a file that cannot be read at all.  Nothing is written unless every row
is valid.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path

from service.addresses import parse_address
from service.bounded_json import loads_bounded
from service.domain import Wallet, parse_customer_id, parse_wallet_id
from service.errors import ImportRejected, InvalidArgument, TooDeep
from service.ports import WalletDirectory
from service.records import WalletRow

__all__ = ["import_wallet_file", "read_wallet_file"]

_log = logging.getLogger(__name__)

_FIELDS = ("wallet_id", "customer_id", "network", "address")
_REQUIRED = frozenset({"customer_id", "network", "address"})
_EXPECTED = "wallet_id (optional), customer_id, network, address"

Record = Mapping[str, object]
Numbered = list[tuple[int, WalletRow]]


def read_wallet_file(path: Path, known_networks: Collection[str]) -> list[WalletRow]:
    """Every row of the file at ``path``, validated, or ``ImportRejected``."""
    return [row for _, row in _read_numbered(path, known_networks)]


async def import_wallet_file(
    directory: WalletDirectory, path: Path, tenant: str, known_networks: Collection[str]
) -> list[Wallet]:
    """Validate the whole file, then register its rows in one transaction.

    A row the directory rejects (for example an address already registered to
    another customer) is reported with its row number in the file.
    """
    numbered = await asyncio.to_thread(_read_numbered, path, known_networks)
    try:
        wallets = await directory.import_wallets(tenant, [row for _, row in numbered])
    except ImportRejected as rejected:
        if rejected.row is None:
            raise
        raise ImportRejected(rejected.reason, row=numbered[rejected.row - 1][0]) from rejected
    _log.info("imported %d wallets from %s for tenant %s", len(wallets), path.name, tenant)
    return wallets


def _read_numbered(path: Path, known_networks: Collection[str]) -> Numbered:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ImportRejected(
            f"unsupported file type {suffix or '(none)'!r}: expected .json or .csv"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ImportRejected(f"{path.name} is not UTF-8 text") from None
    except OSError as error:
        raise ImportRejected(f"cannot read {path.name}: {error.strerror or error}") from None
    if not text.strip():
        raise ImportRejected(f"{path.name} is empty")
    records = _json_records(text) if suffix == ".json" else _csv_records(text)
    if not records:
        raise ImportRejected(f"{path.name} holds no wallets")
    return _validated(records, known_networks)


def _json_records(text: str) -> list[tuple[int, Record]]:
    try:
        data = loads_bounded(text)
    except TooDeep as error:
        raise ImportRejected(f"not valid JSON: {error}") from None
    except json.JSONDecodeError as error:
        raise ImportRejected(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except (ValueError, RecursionError):
        raise ImportRejected("not valid JSON: a value is too large or too deeply nested") from None
    if isinstance(data, dict) and set(data) == {"wallets"}:
        data = data["wallets"]
    if not isinstance(data, list):
        raise ImportRejected('expected a JSON list of wallets or {"wallets": [...]}')
    records: list[tuple[int, Record]] = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise ImportRejected(f"expected an object with fields {_EXPECTED}", row=number)
        records.append((number, item))
    return records


def _csv_records(text: str) -> list[tuple[int, Record]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise ImportRejected(f"CSV header: not valid CSV: {error}") from None
    if header is None:
        raise ImportRejected("CSV has no header row")
    _check_header(header)
    records: list[tuple[int, Record]] = []
    number = 0
    try:
        for number, cells in enumerate(reader, start=1):
            if not cells:
                continue
            if len(cells) != len(header):
                raise ImportRejected(
                    f"expected {len(header)} fields ({','.join(header)}), found {len(cells)}",
                    row=number,
                )
            records.append((number, dict(zip(header, cells, strict=True))))
    except csv.Error as error:
        raise ImportRejected(f"not valid CSV: {error}", row=number + 1) from None
    return records


def _check_header(header: list[str]) -> None:
    for name in header:
        if name not in _FIELDS:
            raise ImportRejected(f"CSV header: unknown column {_shown(name)}: expected {_EXPECTED}")
        if header.count(name) > 1:
            raise ImportRejected(f"CSV header: column {name} appears twice")
    missing = sorted(_REQUIRED - set(header))
    if missing:
        raise ImportRejected(f"CSV header: missing column {missing[0]}: expected {_EXPECTED}")


def _validated(records: list[tuple[int, Record]], known_networks: Collection[str]) -> Numbered:
    rows: Numbered = []
    rows_by_id: dict[str, int] = {}
    rows_by_address: dict[tuple[str, str], int] = {}
    for number, record in records:
        try:
            row = _row(record, known_networks)
        except InvalidArgument as error:
            raise ImportRejected(str(error), row=number) from None
        if row.wallet_id is not None:
            first = rows_by_id.setdefault(row.wallet_id, number)
            if first != number:
                raise ImportRejected(
                    f"wallet_id {row.wallet_id} duplicates row {first}", row=number
                )
        first = rows_by_address.setdefault((row.network, row.address), number)
        if first != number:
            raise ImportRejected(
                f"address {row.address} on network {row.network} duplicates row {first}",
                row=number,
            )
        rows.append((number, row))
    return rows


def _row(record: Record, known_networks: Collection[str]) -> WalletRow:
    """One validated row; ``InvalidArgument`` names the offending field."""
    for name in record:
        if name not in _FIELDS:
            raise InvalidArgument(f"unknown field {_shown(name)}: expected {_EXPECTED}")
    values: dict[str, str] = {}
    for name in _FIELDS:
        value = record.get(name)
        if value is None or value == "":
            if name in _REQUIRED:
                raise InvalidArgument(f"{name} is missing")
            continue
        if not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a string, not {type(value).__name__}")
        values[name] = value
    customer_id = parse_customer_id(values["customer_id"])
    wallet_id = parse_wallet_id(values["wallet_id"]) if "wallet_id" in values else None
    network = values["network"]
    if network not in known_networks:
        known = ", ".join(sorted(known_networks)) or "(none configured)"
        raise InvalidArgument(f"network {_shown(network)} is unknown: expected one of {known}")
    address = parse_address(values["address"])
    return WalletRow(customer_id=customer_id, network=network, address=address, wallet_id=wallet_id)


def _shown(value: str) -> str:
    """A bounded, printable rendering of file content for error messages."""
    return repr(value[:80] + ("..." if len(value) > 80 else ""))
