"""EVM address validation: 20 bytes of hex, EIP-55 checksum enforced when mixed-case."""

from __future__ import annotations

import re

from eth_utils.address import to_checksum_address

from service.errors import InvalidArgument

__all__ = ["parse_address"]

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def parse_address(value: str) -> str:
    """Return the EIP-55 checksummed form of ``value`` or raise InvalidArgument.

    All-lowercase and all-uppercase hex carry no checksum and are accepted; a
    mixed-case address must match its checksum, because a typo in one is
    otherwise indistinguishable from a different, valid-looking address.
    """
    if not _HEX_ADDRESS.fullmatch(value):
        raise InvalidArgument(
            f"address {value[:80]!r} is malformed: expected 0x followed by 40 hex digits",
            field="address",
        )
    checksummed: str = to_checksum_address(value)
    digits = value[2:]
    mixed_case = digits != digits.lower() and digits != digits.upper()
    if mixed_case and value != checksummed:
        raise InvalidArgument(f"address {value!r} fails its EIP-55 checksum", field="address")
    return checksummed
