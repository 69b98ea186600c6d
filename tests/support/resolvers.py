"""A ``HostResolver`` over a fixed table, for webhook destination tests: names that resolve
to loopback or metadata addresses without touching DNS, and names that change their
answer (a rebinding DNS server)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.domain import WebhookPolicy
from service.webhooks.destinations import WebhookDestinations

PUBLIC_V4 = "93.184.215.14"  # a public unicast address (example.com's, at one time)
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

# name -> its addresses; every other name under example.com is PUBLIC_V4.
NAMES: dict[str, Sequence[str]] = {
    "hooks.example.com": [PUBLIC_V4, PUBLIC_V6],
    "v6only.example.com": [PUBLIC_V6],
    "loopback.example.com": ["127.0.0.1"],
    "loopback6.example.com": ["::1"],
    "mixed.example.com": [PUBLIC_V4, "127.0.0.1"],  # ANY internal address refuses
    "metadata.example.com": ["169.254.169.254"],
    "intranet.example.com": ["192.168.0.10"],
    "cgnat.example.com": ["100.64.1.1"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "nat64.example.com": ["64:ff9b::a9fe:a9fe"],
    "ula.example.com": ["fd12:3456::1"],
    "unspecified.example.com": ["0.0.0.0"],
    "nx.example.com": [],  # the lookup fails
}


@dataclass
class TableResolver:
    """Answers from ``names`` (then NAMES); ``answers[name]`` is consumed first, one
    answer per lookup (a DNS server that answers differently each time)."""

    names: dict[str, Sequence[str]] = field(default_factory=dict)
    answers: dict[str, list[Sequence[str]]] = field(default_factory=dict)
    lookups: list[tuple[str, int]] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        name = host.removesuffix(".")
        if self.answers.get(name):
            found = self.answers[name].pop(0)
        elif name in self.names:
            found = self.names[name]
        elif name in NAMES:
            found = NAMES[name]
        elif name.endswith(".example.com"):
            found = [PUBLIC_V4]
        else:
            found = []
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} not known (10.9.8.7)")
        return list(found)


def destinations(
    policy: WebhookPolicy, resolver: TableResolver | None = None
) -> WebhookDestinations:
    """The destination rules over a ``TableResolver``."""
    return WebhookDestinations(policy, resolver or TableResolver())
