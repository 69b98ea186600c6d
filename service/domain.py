"""Plain values the use cases work with.  No protobuf, no I/O, no web3.

Raw token amounts stay ``int`` (the on-chain integer); prices are ``Fraction``
so that nothing is ever rounded before the one place that rounds (money.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import NamedTuple

from service.errors import InvalidArgument

__all__ = [
    "AnnouncedBlock",
    "BalanceChange",
    "BlockHeader",
    "BlockRef",
    "CustomerBalances",
    "FeedPrice",
    "FollowerState",
    "PegPrice",
    "PriceSource",
    "ReadDepth",
    "Snapshot",
    "Token",
    "TokenAmount",
    "Wallet",
    "WalletBalance",
    "WebhookPolicy",
    "parse_customer_id",
    "parse_tenant",
    "parse_wallet_id",
]

DEFAULT_TENANT = "default"

_WALLET_ID = re.compile(r"wal_[A-Za-z0-9_]{1,64}")
_CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9_]{1,64}")
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def parse_wallet_id(value: str) -> str:
    """Return ``value`` if it is a well-formed wallet ID (``wal_`` + 1-64 of [A-Za-z0-9_])."""
    if not _WALLET_ID.fullmatch(value):
        raise InvalidArgument(
            f"wallet_id {_shown(value)} is malformed: expected 'wal_' followed by 1-64 "
            "letters, digits or underscores",
            field="wallet_id",
        )
    return value


def parse_customer_id(value: str) -> str:
    """Return ``value`` if it is a well-formed customer ID (``cus_`` + 1-64 of [A-Za-z0-9_])."""
    if not _CUSTOMER_ID.fullmatch(value):
        raise InvalidArgument(
            f"customer_id {_shown(value)} is malformed: expected 'cus_' followed by 1-64 "
            "letters, digits or underscores",
            field="customer_id",
        )
    return value


def parse_tenant(value: str) -> str:
    """Return ``value`` if it is a well-formed tenant name (``default``, ``acme``, ``team-2``).

    1-64 lowercase letters, digits, ``_`` and ``-``, starting with a letter or digit.
    """
    if not _TENANT.fullmatch(value):
        raise InvalidArgument(
            f"tenant name {_shown(value)} is malformed: expected 1-64 lowercase letters, "
            "digits, '_' or '-', starting with a letter or digit"
        )
    return value


def _shown(value: str) -> str:
    """A bounded, printable rendering of caller input for error messages."""
    text = repr(value[:80])  # repr escapes control characters; it can grow 10x
    return text if len(text) <= 82 else text[:79] + "..."


@dataclass(frozen=True)
class PegPrice:
    """A fixed price in the base currency (stablecoins: 1)."""

    value: Fraction


@dataclass(frozen=True)
class FeedPrice:
    """A Chainlink-style aggregator read in the same snapshot as the balances."""

    address: str
    max_age_seconds: int


PriceSource = PegPrice | FeedPrice


@dataclass(frozen=True)
class Token:
    """A currency held on one network.  ``address`` is None for the native coin."""

    currency: str  # the token's symbol, as the API's `currency` shows it
    decimals: int
    address: str | None
    price: PriceSource
    # What the contract's symbol() must say, when it differs from ``currency`` on purpose
    # (a bridged "USDC.e" configured as USDC); None: it must say ``currency``.
    onchain_symbol: str | None = None

    @property
    def is_native(self) -> bool:
        return self.address is None


@dataclass(frozen=True)
class Wallet:
    """A registered wallet: one address on one network, owned by one customer of one tenant."""

    wallet_id: str
    tenant: str
    customer_id: str
    network: str
    address: str
    created_at: datetime


@dataclass(frozen=True)
class FeedReading:
    """One price-feed answer as read on chain (``answer`` scaled by 10**decimals)."""

    answer: int
    decimals: int
    updated_at: int


@dataclass(frozen=True)
class Snapshot:
    """Balances of some addresses on one network, all read at one block.

    ``balances[address][currency]`` is the raw on-chain integer.  ``feeds`` holds
    the price-feed readings by currency, when they were asked for.
    """

    network: str
    block_number: int
    block_timestamp: int
    balances: dict[str, dict[str, int]]
    feeds: dict[str, FeedReading]


# TokenAmount and WalletBalance are built per wallet of every answer (a 5,000-wallet
# customer: 20,000 of them): immutable tuples, which build in half the time of frozen
# dataclasses (whose ``__init__`` sets each field through ``object.__setattr__``).


class TokenAmount(NamedTuple):
    """An amount of one currency, exact: ``raw`` / 10**``decimals``."""

    currency: str
    raw: int
    decimals: int


class WalletBalance(NamedTuple):
    """What one wallet holds at one block.

    ``stale``: every provider failed and this is the last good read (stale-if-error),
    at most the network's ``max_stale_seconds`` old; the block tells its age.
    """

    wallet: Wallet
    amounts: tuple[TokenAmount, ...]
    block_number: int
    block_timestamp: int
    stale: bool = False


@dataclass(frozen=True)
class CustomerBalances:
    """All wallets of a customer, each network read at one block, and their total value."""

    customer_id: str
    total: Fraction
    total_currency: str
    wallets: tuple[WalletBalance, ...]

    @property
    def stale(self) -> bool:
        """Some network's wallets are its last good read (see ``WalletBalance.stale``)."""
        return any(w.stale for w in self.wallets)


@dataclass(frozen=True)
class BlockRef:
    """The block a snapshot was read at."""

    network: str
    number: int
    hash: str  # 0x-prefixed
    timestamp: int


class BalanceChange(NamedTuple):  # one per change per block, and per stream: a tuple
    """One currency of one address changed between two reads (raw on-chain integers)."""

    network: str
    address: str
    currency: str
    decimals: int
    previous: int
    current: int
    # Not 0: this change corrects a value announced at a block a reorg replaced
    # (``previous`` is that value); the network's reorg count then, so that two
    # identical corrections (a chain flipping back and forth) stay two events.
    reorg: int = 0


@dataclass(frozen=True)
class AnnouncedBlock:
    """A block whose changes were announced: the (address, currency) pairs it changed."""

    number: int
    hash: str
    keys: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class FollowerState:
    """What a follower last read: the block and every watched address's raw amounts,
    the recent blocks whose changes it announced (to recognise a reorg that replaced
    one, even after a restart) and how many reorgs it corrected."""

    block: BlockRef
    balances: dict[str, dict[str, int]]
    announced: tuple[AnnouncedBlock, ...] = ()
    reorgs: int = 0


@dataclass(frozen=True)
class BlockHeader:
    """What the chain says of one block (the chain adapter parses the node's JSON)."""

    number: int
    hash: str  # 0x-prefixed
    parent_hash: str
    timestamp: int


@dataclass(frozen=True)
class ReadDepth:
    """Which block of a network is read: head minus ``confirmations``, or (when 0) the
    ``block_tag``'s block (``latest``, ``safe``, ``finalized``)."""

    confirmations: int
    block_tag: str


@dataclass(frozen=True)
class WebhookPolicy:
    """Where and how webhooks are sent: public https receivers, plus the development
    receivers ``allow_http_hosts`` names (``host:port`` entries, plain http allowed, exempt
    from the address rules); each send waits ``timeout_seconds``; retry ``n`` follows
    ``retry_schedule_seconds[n - 1]``."""

    allow_http_hosts: tuple[str, ...]  # "127.0.0.1:8099", "[::1]:8099", "localhost:8099"
    timeout_seconds: float
    retry_schedule_seconds: tuple[float, ...]
