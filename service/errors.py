"""The one exception tree of the service.

    BalancesError                 expected, carries a message safe to show a caller
    ├── InvalidArgument           the caller sent something malformed (an ID, an address)
    │   └── UndecodableRequest    the request's bytes are not a message of its type
    ├── NotFound                  nothing by that ID for this caller
    │   ├── WalletNotFound
    │   ├── CustomerNotFound
    │   └── WebhookConfigNotFound
    ├── AlreadyExists             the thing exists and belongs to someone else of this tenant
    │   └── AddressTaken          a wallet address is another customer's
    ├── Unauthenticated           no API key, or not a valid one (never says which)
    ├── FeatureDisabled           the server runs without a feature the RPC needs (watching)
    ├── RateLimited               an API key is over a rate limit or concurrency quota
    ├── ChainUnavailable          a network or one of its tokens/feeds could not be read
    │   └── ArchiveRequired       no provider holds the state of an old block any more
    └── PriceUnavailable          a price needed for a total is missing or too old
    StartupError                  a command or the server cannot start (one line in the CLI)
    ├── ConfigError               the configuration is wrong (names the dotted key)
    ├── ImportRejected            a wallet import file is wrong; nothing was written
    ├── SchemaTooNew              the database was written by a newer version
    ├── CannotListen              a listen address is taken or not allowed
    └── TemplateError             a google.api.http path template is malformed (a proto bug)
    TooDeep (ValueError)          untrusted JSON nests too deep; each reader turns it into its
                                  own error (InvalidArgument, ImportRejected, HTTP 400)

Each error maps to one gRPC status with rich details (``google.rpc.ErrorInfo`` and
more) in ``service.api.status``; what an error carries here (``field``, ``network``,
``token``, ``quota``...) is what that mapping needs.

Anything else that escapes a use case is a bug: the transport turns it into
INTERNAL with a request ID and logs it, redacted.  Messages never carry an RPC
URL: errors name the network and token instead.
"""

from __future__ import annotations

__all__ = [
    "AddressTaken",
    "AlreadyExists",
    "ArchiveRequired",
    "BalancesError",
    "CannotListen",
    "ChainUnavailable",
    "ConfigError",
    "CustomerNotFound",
    "FeatureDisabled",
    "ImportRejected",
    "InvalidArgument",
    "NotFound",
    "PriceUnavailable",
    "RateLimited",
    "SchemaTooNew",
    "StartupError",
    "TemplateError",
    "TooDeep",
    "Unauthenticated",
    "UndecodableRequest",
    "WalletNotFound",
    "WebhookConfigNotFound",
]


class BalancesError(Exception):
    """An expected failure whose message is safe to return to the caller."""


class InvalidArgument(BalancesError):
    """The request is malformed; retrying it unchanged cannot succeed.

    ``field`` is the request field at fault, by its proto name (``wallet_id``,
    ``page_token``), or "" when no one field is (the whole request).
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class UndecodableRequest(InvalidArgument):
    """The request's bytes do not decode as the RPC's request type: one fixed message,
    so nothing about the parser (a class name, an offset) reaches the caller."""

    def __init__(self) -> None:
        super().__init__("request message could not be decoded")


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


class WebhookConfigNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("no webhook is configured for this tenant")


class AlreadyExists(BalancesError):
    """Creating would clash with something the caller's tenant already has."""


class AddressTaken(AlreadyExists):
    """The address is registered to another customer of the tenant (never named)."""

    def __init__(self, network: str, address: str) -> None:
        super().__init__(
            f"address {address} on network {network} is already registered to another customer"
        )
        self.network = network
        self.address = address


class Unauthenticated(BalancesError):
    """No API key, or one that is unknown, malformed or revoked: deliberately one message.

    ``missing``: no key was sent at all (the caller knows that already, so saying it
    tells nothing); an unknown, malformed and a revoked key stay indistinguishable.
    """

    def __init__(self, *, missing: bool = False) -> None:
        super().__init__("missing or invalid API key")
        self.missing = missing


class FeatureDisabled(BalancesError):
    """The RPC needs a feature this server was started without (``feature``: ``watch``)."""

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(message)
        self.feature = feature


class RateLimited(BalancesError):
    """An API key is over its rate limit or a concurrency quota; retry after ``retry_after`` s.

    ``quota``: which one, ``rate`` (requests per second), ``in_flight`` (unary calls at
    once) or ``streams`` (watch streams open at once).
    """

    def __init__(self, message: str, retry_after: float, *, quota: str = "rate") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.quota = quota


class ChainUnavailable(BalancesError):
    """A network, or one token or feed on it, could not be read.  Retryable.

    ``state_missing``: every provider said it no longer holds the state asked for
    (pruned: "missing trie node" and the like), so only an archive node could answer.
    """

    def __init__(
        self, network: str, reason: str, token: str | None = None, *, state_missing: bool = False
    ) -> None:
        where = f"network {network}" + (f", token {token}" if token else "")
        super().__init__(f"{where}: {reason}")
        self.network = network
        self.token = token
        self.reason = reason
        self.state_missing = state_missing


class ArchiveRequired(ChainUnavailable):
    """Every provider of the network has pruned the state of ``block``: retrying cannot
    help until an archive provider is configured (FAILED_PRECONDITION)."""

    def __init__(self, network: str, block: int) -> None:
        super().__init__(
            network,
            f"no provider holds the state of block {block} any more (pruned); "
            "reading it needs an archive provider",
            state_missing=True,
        )
        self.block = block


class PriceUnavailable(BalancesError):
    """A price source gave no usable price (failed read, non-positive or stale answer)."""

    def __init__(self, network: str, token: str, reason: str) -> None:
        super().__init__(f"price of {token} on network {network}: {reason}")
        self.network = network
        self.token = token


class StartupError(Exception):
    """A command or the server cannot start; the message is one line, safe to print."""


class ConfigError(StartupError):
    """The configuration is invalid.  ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ImportRejected(StartupError):
    """A wallet import file is invalid; ``row`` is 1-based (None for whole-file problems)."""

    def __init__(self, reason: str, row: int | None = None) -> None:
        super().__init__(f"row {row}: {reason}" if row is not None else reason)
        self.row = row
        self.reason = reason


class SchemaTooNew(StartupError):
    """The database has a schema version newer than this version of the service knows.

    ``database`` names the database safely (a file path, never a URL that may
    carry a password).
    """

    def __init__(self, database: str, found: int, known: int) -> None:
        super().__init__(
            f"the database at {database} has schema version {found},"
            f" newer than this version's {known}; upgrade balances"
        )
        self.database = database
        self.found = found
        self.known = known


class CannotListen(StartupError):
    """A listen address is already in use (or not allowed): nothing was started on it."""

    def __init__(self, address: str, reason: str = "the address is in use") -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address


class TemplateError(StartupError):
    """A ``google.api.http`` path template does not follow the grammar (a proto bug)."""


class TooDeep(ValueError):
    """Untrusted JSON nests deeper than allowed (see ``service.bounded_json``)."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"nested deeper than {max_depth} levels")
        self.max_depth = max_depth
