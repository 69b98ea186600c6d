"""The one exception tree of the service.

    BalancesError                 expected, carries a message safe to show a caller
    ├── InvalidArgument           the caller sent something malformed (an ID, an address)
    ├── NotFound                  nothing by that ID for this caller
    │   ├── WalletNotFound
    │   └── CustomerNotFound
    ├── AlreadyExists             the thing exists and belongs to someone else of this tenant
    ├── Unauthenticated           no API key, or not a valid one (never says which)
    ├── ChainUnavailable          a network or one of its tokens/feeds could not be read
    └── PriceUnavailable          a price needed for a total is missing or too old
    ConfigError                   the configuration file is wrong (start-up only)
    ImportRejected                a wallet import file is wrong; nothing was written

Anything else that escapes a use case is a bug: the transport turns it into
INTERNAL with a request ID and logs it, redacted.  Messages never carry an RPC
URL: errors name the network and token instead.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "BalancesError",
    "ChainUnavailable",
    "ConfigError",
    "CustomerNotFound",
    "ImportRejected",
    "InvalidArgument",
    "NotFound",
    "PriceUnavailable",
    "Unauthenticated",
    "WalletNotFound",
]


class BalancesError(Exception):
    """An expected failure whose message is safe to return to the caller."""


class InvalidArgument(BalancesError):
    """The request is malformed; retrying it unchanged cannot succeed."""


class NotFound(BalancesError):
    """The caller asked for something that does not exist (for them)."""


class WalletNotFound(NotFound):
    def __init__(self, wallet_id: str) -> None:
        super().__init__(f"wallet {wallet_id} not found")
        self.wallet_id = wallet_id


class CustomerNotFound(NotFound):
    def __init__(self, customer_id: str) -> None:
        super().__init__(f"customer {customer_id} not found")
        self.customer_id = customer_id


class AlreadyExists(BalancesError):
    """Creating would clash with something the caller's tenant already has."""


class Unauthenticated(BalancesError):
    """No API key, or one that is unknown, malformed or revoked: deliberately one message."""

    def __init__(self) -> None:
        super().__init__("missing or invalid API key")


class ChainUnavailable(BalancesError):
    """A network, or one token or feed on it, could not be read.  Retryable."""

    def __init__(self, network: str, reason: str, token: str | None = None) -> None:
        where = f"network {network}" + (f", token {token}" if token else "")
        super().__init__(f"{where}: {reason}")
        self.network = network
        self.token = token
        self.reason = reason


class PriceUnavailable(BalancesError):
    """A price source gave no usable price (failed read, non-positive or stale answer)."""

    def __init__(self, network: str, token: str, reason: str) -> None:
        super().__init__(f"price of {token} on network {network}: {reason}")
        self.network = network
        self.token = token


class ConfigError(Exception):
    """The configuration is invalid.  ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ImportRejected(Exception):
    """A wallet import file is invalid; ``row`` is 1-based (None for whole-file problems)."""

    def __init__(self, reason: str, row: int | None = None) -> None:
        super().__init__(f"row {row}: {reason}" if row is not None else reason)
        self.row = row
        self.reason = reason
