"""Where webhooks may go: public destinations only, checked at configuration and again,
address by address, at every send (no server-side request forgery).

A URL is refused by the first rule it breaks; the message names the rule and
never the URL, the addresses its host resolves to, or the resolver's error:

1. Syntax (``urls.split_webhook_url``).
2. Development receivers: a URL whose ``host:port`` is in ``[webhooks]
   allow_http_hosts`` may use plain http and is exempt from rules 3-5, unless
   that port is one the service itself listens on.  Any other URL must use https.
3. Canonical hosts: a dotted-quad IPv4 address without leading zeros, an IPv6
   address in its RFC 5952 form, or a fully qualified name of LDH labels with
   no trailing dot.  Integer (``2130706433``), hex (``0x7f000001``), octal
   (``0177.0.0.1``) and short (``127.1``) IPv4 forms, IPv4-mapped IPv6
   literals, zone IDs and single-label names are refused.  ``xn--`` labels must
   be punycode that decodes to non-ASCII and encodes back to the same label.
4. Internal names: ``INTERNAL_DOMAINS`` and every name under them.
5. Addresses: the host, or ANY address it resolves to, is loopback, private
   (RFC 1918, IPv6 ULA), link-local (cloud metadata at 169.254.169.254 and
   fd00:ec2::254 included), carrier-grade NAT (100.64/10), multicast,
   unspecified, reserved (documentation, benchmarking, 240/4, broadcast, IETF
   protocol assignments such as 192.0.0.192), IPv6 site-local, or the
   IPv4-mapped, IPv4-compatible, IPv4-translated, 6to4 or NAT64 form of one of
   those.  The checks are explicit tables: ``ipaddress.is_global`` differs
   between Python versions (before 3.13 it did not look into IPv4-mapped
   addresses and called multicast and site-local addresses global), so it is
   only a last catch-all.

Names are looked up as absolute names (a trailing dot), so no resolver search
domain can turn ``hooks.example`` into ``hooks.example.cluster.local``.  At
send time the HTTP adapter calls ``addresses`` from its connector: one lookup,
every address vetted, and only those addresses connected to (no second lookup
for a rebinding DNS server to answer differently).
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass
from encodings import idna
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from service.domain import WebhookPolicy
from service.errors import InvalidArgument
from service.ports import HostResolver
from service.webhooks.urls import WebhookTarget, split_webhook_url

__all__ = [
    "INTERNAL_DOMAINS",
    "Destination",
    "WebhookDestinations",
    "address_kind",
    "parse_dev_receiver",
]

# Names that only mean something inside a network: special-use and private-use
# domains (RFC 6761, 6762, 8375, ICANN's .internal), Kubernetes' cluster names,
# and suffixes that common resolvers and routers serve locally.
INTERNAL_DOMAINS = (
    "localhost",
    "localdomain",
    "local",  # mDNS; also Kubernetes' cluster.local
    "internal",  # metadata.google.internal and other cloud-internal names
    "svc",  # kubernetes.default.svc
    "arpa",  # reverse-lookup names, home.arpa
    "test",
    "invalid",
    "example",
    "onion",
    "lan",
    "home",
    "corp",
    "intranet",
    "private",
)

NOT_CANONICAL = "url host must be a canonical name or address"
RESOLVE_TIMEOUT_SECONDS = 5.0
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")  # what URL parsers read as IPv4


def _nets4(*rules: tuple[str, str]) -> tuple[tuple[IPv4Network, str], ...]:
    return tuple((IPv4Network(net), kind) for net, kind in rules)


def _nets6(*rules: tuple[str, str]) -> tuple[tuple[IPv6Network, str], ...]:
    return tuple((IPv6Network(net), kind) for net, kind in rules)


# IANA's special-purpose registries, as far as they concern where a request may go.
_V4_KINDS = _nets4(
    ("0.0.0.0/8", "unspecified"),  # "this network"
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # 169.254.169.254: cloud instance metadata
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments (Oracle metadata 192.0.0.192)
    ("192.0.2.0/24", "reserved"),  # documentation
    ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast (deprecated)
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),  # benchmarking
    ("198.51.100.0/24", "reserved"),  # documentation
    ("203.0.113.0/24", "reserved"),  # documentation
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # future use, and the broadcast address
)
_V6_KINDS = _nets6(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),  # local-use NAT64 (RFC 8215)
    ("100::/64", "reserved"),  # discard-only
    ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo among them
    ("2001:db8::/32", "reserved"),  # documentation
    ("3fff::/20", "reserved"),  # documentation (RFC 9637)
    ("5f00::/16", "reserved"),  # SRv6 SIDs
    ("fc00::/7", "private"),  # unique local (ULA); AWS metadata is fd00:ec2::254
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
# IPv6 forms that carry an IPv4 address in their last 32 bits: judged by that address.
_V4_MAPPED = IPv6Network("::ffff:0:0/96")
_V4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
_NAT64 = IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = IPv6Network("::/96")  # deprecated: refused even around a public address
_6TO4 = IPv6Network("2002::/16")  # carries it in bits 16-48


def address_kind(address: IPv4Address | IPv6Address) -> str | None:
    """Why no webhook may go to ``address`` (``"loopback"``, ``"private"``, ...), or
    None when it is a public unicast address."""
    if isinstance(address, IPv4Address):
        return _v4_kind(address)
    address = IPv6Address(address.packed)  # without a zone ID
    if int(address) <= 1:
        return "unspecified" if int(address) == 0 else "loopback"
    embedded = _embedded_v4(address)
    if embedded is not None:
        kind = _v4_kind(embedded)
        return kind or ("reserved" if address in _V4_COMPATIBLE else None)
    for network, kind in _V6_KINDS:
        if address in network:
            return kind
    return None if address.is_global else "non-public"


def _v4_kind(address: IPv4Address) -> str | None:
    for network, kind in _V4_KINDS:
        if address in network:
            return kind
    return None if address.is_global else "non-public"


def _embedded_v4(address: IPv6Address) -> IPv4Address | None:
    if any(address in n for n in (_V4_MAPPED, _V4_TRANSLATED, _NAT64, _V4_COMPATIBLE)):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _6TO4:
        return address.sixtofour
    return None


def _refusal(verb: str, kind: str) -> str:
    article = "an" if kind[0] in "aeiou" else "a"
    return f"url host {verb} {article} {kind} address"


def parse_dev_receiver(entry: str) -> tuple[str, int]:
    """``(host, port)`` of an ``allow_http_hosts`` entry such as ``127.0.0.1:8099``,
    ``localhost:8099`` or ``[::1]:8099``; ``ValueError`` when it is not one."""
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError("must be HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:8099")
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        try:
            address = IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError("must name an IPv6 address in its canonical form") from None
        if address.compressed != host[1:-1] or address.ipv4_mapped is not None:
            raise ValueError("must name an IPv6 address in its canonical form")
        return host[1:-1], int(port)
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("must name a host: an IPv4 address, [IPv6] or a name (no dot at the end)")
    if _NUMERIC_LABEL.fullmatch(labels[-1]) and not _canonical_v4(host):
        raise ValueError("must name an IPv4 address in its canonical dotted form")
    return host, int(port)


def _canonical_v4(host: str) -> IPv4Address | None:
    try:
        address = IPv4Address(host)  # refuses leading zeros and short forms
    except ValueError:
        return None
    return address if str(address) == host else None


@dataclass(frozen=True)
class Destination:
    """A URL's target that passed the rules that need no lookup."""

    target: WebhookTarget
    dev_receiver: bool  # an allowlisted host:port: exempt from the address rules
    address: IPv4Address | IPv6Address | None  # when the host is an address literal


class WebhookDestinations:
    """The destination rules, shared by the config use case, delivery and the HTTP adapter.

    ``serving_on`` tells it the ports this process listens on once they are
    bound (a configured port 0 is only known then); development receivers on
    them are refused from that moment.
    """

    def __init__(
        self,
        policy: WebhookPolicy,
        resolver: HostResolver,
        *,
        resolve_timeout_seconds: float = RESOLVE_TIMEOUT_SECONDS,
    ) -> None:
        self._dev_receivers = frozenset(parse_dev_receiver(e) for e in policy.allow_http_hosts)
        self._resolver = resolver
        self._resolve_timeout = resolve_timeout_seconds
        self._own_ports: frozenset[int] = frozenset()

    def serving_on(self, ports: Iterable[int]) -> None:
        """The ports this process has bound (gRPC, REST)."""
        self._own_ports = frozenset(ports)

    def check_url(self, url: str) -> Destination:
        """Rules 1-5 as far as they need no lookup; ``InvalidArgument`` naming the rule."""
        target = split_webhook_url(url)
        if self._is_dev_receiver(target.host, target.port):
            return Destination(target, dev_receiver=True, address=None)
        if target.scheme != "https":
            raise InvalidArgument(
                "url must use https: plain http is allowed only to the configured "
                "development receivers",
                field="url",
            )
        return Destination(target, dev_receiver=False, address=_public_host(target.host))

    async def check(self, url: str) -> Destination:
        """Every rule, looking the host name up: what configuring a webhook requires."""
        destination = self.check_url(url)
        if not destination.dev_receiver and destination.address is None:
            target = destination.target
            try:
                await self.addresses(target.host, target.port)
            except (OSError, TimeoutError):  # its text may name internal servers
                raise InvalidArgument("url host could not be resolved", field="url") from None
        return destination

    async def addresses(self, host: str, port: int) -> list[str]:
        """Look ``host`` up once; every address, each vetted: the ones to connect to.

        ``InvalidArgument`` when a rule refuses the host or any of its
        addresses; ``OSError``/``TimeoutError`` when the lookup fails.
        """
        if self._is_dev_receiver(host, port):
            return await self._lookup(host, port)
        literal = _public_host(host)
        if literal is not None:
            return [host]
        found = await self._lookup(host + ".", port)  # absolute: no search domains
        for text in found:
            try:
                kind = address_kind(ip_address(text))
            except ValueError:
                kind = "unrecognised"
            if kind is not None:
                raise InvalidArgument(_refusal("resolves to", kind), field="url")
        return found

    def _is_dev_receiver(self, host: str, port: int) -> bool:
        if (host, port) not in self._dev_receivers:
            return False
        if port in self._own_ports:
            raise InvalidArgument(
                "url must not point at one of the service's own ports", field="url"
            )
        return True

    async def _lookup(self, host: str, port: int) -> list[str]:
        async with asyncio.timeout(self._resolve_timeout):
            found = await self._resolver.resolve(host, port)
        if not found:
            raise OSError("no addresses")
        return list(dict.fromkeys(found))


def _public_host(host: str) -> IPv4Address | IPv6Address | None:
    """Rules 3-5 without a lookup: the address when ``host`` is a literal, else None
    for a name that may be looked up; ``InvalidArgument`` otherwise."""
    if ":" in host:
        try:
            v6 = IPv6Address(host)
        except ValueError:
            raise InvalidArgument(NOT_CANONICAL, field="url") from None
        if kind := address_kind(v6):
            raise InvalidArgument(_refusal("is", kind), field="url")
        # Mapped forms print differently across Python versions: always refused.
        if v6.scope_id or v6.ipv4_mapped is not None or v6.compressed != host:
            raise InvalidArgument(NOT_CANONICAL, field="url")
        return v6
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):  # URL parsers would read an IPv4 address
        v4 = _canonical_v4(host)
        if v4 is None:
            raise InvalidArgument(NOT_CANONICAL, field="url")
        if kind := address_kind(v4):
            raise InvalidArgument(_refusal("is", kind), field="url")
        return v4
    if len(host) > 253 or not all(_canonical_label(label) for label in labels):
        raise InvalidArgument(NOT_CANONICAL, field="url")
    if any(host == d or host.endswith("." + d) for d in INTERNAL_DOMAINS):
        raise InvalidArgument("url host is an internal name", field="url")
    if len(labels) < 2:  # resolvers would try their search domains
        raise InvalidArgument("url host must be a fully qualified domain name", field="url")
    return None


def _canonical_label(label: str) -> bool:
    if not _LABEL.fullmatch(label):
        return False
    if label[2:4] != "--":
        return True
    if not label.startswith("xn--"):
        return False  # reserved for future encodings
    try:
        decoded = codecs.decode(label[4:].encode("ascii"), "punycode")
        return not decoded.isascii() and idna.ToASCII(decoded) == label.encode("ascii")
    except (UnicodeError, ValueError):
        return False
