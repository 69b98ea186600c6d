"""Webhook destinations (SSRF): a table of internal URLs refused at configuration (the use
case, real SQLite store) and at delivery (the real aiohttp sender, a test resolver, and a
real listening loopback socket that must see no connection); public URLs accepted;
rebinding, development receivers, the service's own ports, and environment proxies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
import pytest_asyncio

from service.domain import WebhookPolicy
from service.errors import InvalidArgument
from service.store.sqlite import SqliteStores, open_sqlite_stores
from service.webhooks.delivery import WebhookDelivery
from service.webhooks.destinations import WebhookDestinations, address_kind
from service.webhooks.emitter import WebhookEmitter
from service.webhooks.http_sender import HttpWebhookSender, SystemResolver
from service.webhooks.manage import WebhookManagement
from service.webhooks.signing import signed_headers
from tests.support.resolvers import NAMES, PUBLIC_V4, PUBLIC_V6, TableResolver
from tests.support.webhook_receiver import HOOK_PATH, WebhookReceiver
from tests.support.webhook_values import ACME, ADDR_1, block, snapshot_of, usdc

aio = pytest.mark.asyncio(loop_scope="session")

DEV_PORT = 9000  # the development receiver allowed in POLICY: 127.0.0.1:9000
POLICY = WebhookPolicy(
    allow_http_hosts=(f"127.0.0.1:{DEV_PORT}",),
    timeout_seconds=2.0,
    retry_schedule_seconds=(0.01, 0.01),
)
CANONICAL = "canonical name or address"
CANARIES = ("10.9.8.7", "127.0.0.1", "169.254.169.254", "192.168.0.10", "::1")

# Every form of an internal destination; {port} is a real listening loopback socket in
# the delivery test.  (URL template, what the refusal says.)
INTERNAL = [
    # loopback, as addresses
    ("https://127.0.0.1:{port}/hook", "is a loopback address"),
    ("https://127.0.0.2:{port}/hook", "is a loopback address"),
    ("https://[::1]:{port}/hook", "is a loopback address"),
    ("https://[0:0:0:0:0:0:0:1]:{port}/hook", "is a loopback address"),
    ("https://0.0.0.0:{port}/hook", "is an unspecified address"),  # Linux: localhost
    ("https://[::]:{port}/hook", "is an unspecified address"),
    # loopback, in the forms URL parsers and inet_aton accept
    ("https://2130706433:{port}/hook", CANONICAL),  # integer
    ("https://0x7f000001:{port}/hook", CANONICAL),  # hex
    ("https://0x7f.0.0.1:{port}/hook", CANONICAL),
    ("https://0177.0.0.1:{port}/hook", CANONICAL),  # octal
    ("https://127.1:{port}/hook", CANONICAL),  # short
    ("https://0:{port}/hook", CANONICAL),
    ("https://127.0.0.1.:{port}/hook", CANONICAL),
    # loopback, by name
    ("https://localhost:{port}/hook", "internal name"),
    ("https://localhost.:{port}/hook", CANONICAL),  # trailing dot
    ("https://api.localhost:{port}/hook", "internal name"),
    ("https://loopback.example.com:{port}/hook", "resolves to a loopback address"),
    ("https://loopback6.example.com:{port}/hook", "resolves to a loopback address"),
    ("https://mixed.example.com:{port}/hook", "resolves to a loopback address"),  # ANY
    ("https://mapped.example.com:{port}/hook", "resolves to a loopback address"),
    ("https://unspecified.example.com:{port}/hook", "resolves to an unspecified address"),
    # IPv4-mapped, -compatible, NAT64 and 6to4 forms of internal addresses
    ("https://[::ffff:7f00:1]:{port}/hook", "is a loopback address"),
    ("https://[::ffff:127.0.0.1]:{port}/hook", "is a loopback address"),
    ("https://[::7f00:1]:{port}/hook", "is a loopback address"),
    ("https://[::ffff:a9fe:a9fe]:{port}/latest/meta-data/", "is a link-local address"),
    ("https://[64:ff9b::a9fe:a9fe]:{port}/latest/meta-data/", "is a link-local address"),
    ("https://[2002:a9fe:a9fe::1]:{port}/latest/meta-data/", "is a link-local address"),
    ("https://[::ffff:0:a00:1]:{port}/hook", "is a private address"),  # IPv4-translated
    ("https://nat64.example.com:{port}/hook", "resolves to a link-local address"),
    # cloud metadata
    ("https://169.254.169.254:{port}/latest/meta-data/", "is a link-local address"),
    ("https://[fd00:ec2::254]:{port}/latest/meta-data/", "is a private address"),
    ("https://metadata.google.internal:{port}/computeMetadata/v1/", "internal name"),
    ("https://metadata.example.com:{port}/latest/meta-data/", "resolves to a link-local"),
    ("https://192.0.0.192:{port}/opc/v1/", "is a reserved address"),  # Oracle
    ("https://100.100.100.200:{port}/latest/", "is a carrier-grade NAT address"),  # Alibaba
    # private networks, CGNAT, IPv6 ULA, link-local and site-local
    ("https://10.0.0.1:{port}/hook", "is a private address"),
    ("https://172.16.5.4:{port}/hook", "is a private address"),
    ("https://192.168.1.1:{port}/hook", "is a private address"),
    ("https://intranet.example.com:{port}/hook", "resolves to a private address"),
    ("https://100.64.0.1:{port}/hook", "is a carrier-grade NAT address"),
    ("https://cgnat.example.com:{port}/hook", "resolves to a carrier-grade NAT address"),
    ("https://[fc00::1]:{port}/hook", "is a private address"),
    ("https://ula.example.com:{port}/hook", "resolves to a private address"),
    ("https://[fe80::1]:{port}/hook", "is a link-local address"),
    ("https://[fe80::1%25eth0]:{port}/hook", "is a link-local address"),
    ("https://[fec0::1]:{port}/hook", "is a site-local address"),
    # multicast, broadcast, reserved
    ("https://224.0.0.1:{port}/hook", "is a multicast address"),
    ("https://[ff02::1]:{port}/hook", "is a multicast address"),
    ("https://255.255.255.255:{port}/hook", "is a reserved address"),
    ("https://240.0.0.1:{port}/hook", "is a reserved address"),
    ("https://198.18.0.1:{port}/hook", "is a reserved address"),
    ("https://[2001:db8::1]:{port}/hook", "is a reserved address"),
    # internal names
    ("https://kubernetes.default.svc:{port}/api", "internal name"),
    ("https://kubernetes.default.svc.cluster.local:{port}/api", "internal name"),
    ("https://printer.local:{port}/hook", "internal name"),
    ("https://router.home.arpa:{port}/hook", "internal name"),
    ("https://wiki:{port}/hook", "fully qualified"),  # search domains would apply
    # non-canonical names
    ("https://xn--abc.example.com:{port}/hook", CANONICAL),
    ("https://under_score.example.com:{port}/hook", CANONICAL),
    ("https://a..example.com:{port}/hook", CANONICAL),
    # user info, and plain http beside the development receiver
    ("https://user:pw@hooks.example.com:{port}/hook", "user name or password"),
    ("https://hooks.example.com@127.0.0.1:{port}/hook", "user name or password"),
    ("https://hooks.example.com\\@127.0.0.1:{port}/hook", "user name or password"),
    ("http://hooks.example.com:{port}/hook", "must use https"),
    ("http://127.0.0.1:{port}/hook", "must use https"),  # 127.0.0.1:9000 only
    ("http://127.0.0.1:22/", "must use https"),
    ("http://localhost:9000/hook", "must use https"),  # another name for the dev host
]

PUBLIC = [  # (URL, the addresses the sender's connector is given, lookups made)
    ("https://hooks.example.com/in", [PUBLIC_V4, PUBLIC_V6], 2),
    ("HTTPS://Hooks.Example.COM:8443/in?x=1", [PUBLIC_V4, PUBLIC_V6], 2),
    ("https://v6only.example.com/in", [PUBLIC_V6], 2),
    ("https://xn--bcher-kva.example.com/in", [PUBLIC_V4], 2),  # bücher
    ("https://8.8.8.8/in", ["8.8.8.8"], 0),
    ("https://[2606:4700:4700::1111]/in", ["2606:4700:4700::1111"], 0),
    ("https://[64:ff9b::808:808]/in", ["64:ff9b::808:808"], 0),  # NAT64 of a public address
    ("http://127.0.0.1:9000/in", None, 0),  # the development receiver
]


def assert_says_nothing_internal(message: str, url: str) -> None:
    assert url not in message and "hook" not in message
    for canary in CANARIES:
        assert canary not in message


@pytest_asyncio.fixture(loop_scope="session")
async def stores(tmp_path: Path) -> AsyncIterator[SqliteStores]:
    async with await open_sqlite_stores(tmp_path / "wallets.sqlite3") as opened:
        yield opened


@dataclass
class Listener:
    """A real loopback server (127.0.0.1 and, where there is one, ::1) counting accepts."""

    port: int = 0
    accepted: int = 0
    servers: list[asyncio.Server] = field(default_factory=list)


@pytest_asyncio.fixture(loop_scope="session")
async def listener() -> AsyncIterator[Listener]:
    found = Listener()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        found.accepted += 1
        writer.close()

    v4 = await asyncio.start_server(accept, "127.0.0.1", 0)
    found.port = v4.sockets[0].getsockname()[1]
    found.servers.append(v4)
    with suppress(OSError):  # no IPv6 loopback here: the IPv6 rows still show nothing sent
        found.servers.append(await asyncio.start_server(accept, "::1", found.port))
    try:
        yield found
    finally:
        for server in found.servers:
            server.close()
            await server.wait_closed()


@pytest_asyncio.fixture(loop_scope="session")
async def sender() -> AsyncIterator[tuple[HttpWebhookSender, TableResolver]]:
    resolver = TableResolver()
    sending = HttpWebhookSender(POLICY, WebhookDestinations(POLICY, resolver))
    try:
        yield sending, resolver
    finally:
        await sending.aclose()


def headers() -> dict[str, str]:
    secret = "whsec_" + "A" * 43 + "="
    return signed_headers(secret, "msg_1", int(datetime.now(UTC).timestamp()), "{}")


# ---------------------------------------------------------------- the table


def test_the_table_covers_at_least_forty_internal_urls() -> None:
    assert len(INTERNAL) >= 40 and len({url for url, _ in INTERNAL}) == len(INTERNAL)


@aio
@pytest.mark.parametrize(("template", "reason"), INTERNAL)
async def test_internal_urls_are_refused_at_configuration(
    stores: SqliteStores, template: str, reason: str
) -> None:
    url = template.format(port=8443)
    management = WebhookManagement(stores.webhooks, WebhookDestinations(POLICY, TableResolver()))
    with pytest.raises(InvalidArgument, match=reason) as caught:
        await management.update_config(ACME, url, [], False)
    assert_says_nothing_internal(str(caught.value), url)
    assert await stores.webhooks.webhook_config(ACME) is None


@aio
@pytest.mark.parametrize(("template", "reason"), INTERNAL)
async def test_internal_urls_are_refused_at_delivery_without_a_connection(
    listener: Listener,
    sender: tuple[HttpWebhookSender, TableResolver],
    template: str,
    reason: str,
) -> None:
    sending, resolver = sender
    url = template.format(port=listener.port)
    outcome = await sending.send(url, b"{}", headers())
    assert outcome is not None and outcome.startswith("url no longer allowed: ")
    assert reason in outcome
    assert_says_nothing_internal(outcome, url)
    await asyncio.sleep(0.05)  # a connection attempt would have been accepted by now
    assert listener.accepted == 0
    assert len(resolver.lookups) <= 1  # at most one lookup, at connect time


@aio
@pytest.mark.parametrize(("url", "addresses", "lookups"), PUBLIC)
async def test_public_urls_are_accepted_and_connect_only_to_their_vetted_addresses(
    stores: SqliteStores, url: str, addresses: list[str] | None, lookups: int
) -> None:
    resolver = TableResolver()
    rules = WebhookDestinations(POLICY, resolver)
    change = await WebhookManagement(stores.webhooks, rules).update_config(ACME, url, [], False)
    assert change.config.url == url  # stored as given
    target = rules.check_url(url).target
    if addresses is not None:  # what the sender's connector is given
        assert await rules.addresses(target.host, target.port) == addresses
    # Names are looked up as absolute names (no search domains); literals never.
    assert [host for host, _ in resolver.lookups] == [target.host + "."] * lookups


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        # Python before 3.13 calls these global, or looks through no mapped address.
        (IPv4Address("224.0.0.251"), "multicast"),
        (IPv6Address("ff05::1:3"), "multicast"),
        (IPv6Address("fec0::1"), "site-local"),
        (IPv4Address("192.0.0.192"), "reserved"),
        (IPv6Address("::ffff:169.254.169.254"), "link-local"),
        (IPv6Address("::ffff:10.0.0.1"), "private"),
        (IPv6Address("::ffff:8.8.8.8"), None),  # a public address, mapped
        (IPv6Address("::8.8.8.8"), "reserved"),  # IPv4-compatible: deprecated
        (IPv6Address("2002:808:808::1"), None),  # 6to4 of a public address
        (IPv6Address("64:ff9b:1::1"), "private"),  # local-use NAT64
        (IPv6Address("2001::1"), "reserved"),  # Teredo
        (IPv4Address("1.1.1.1"), None),
    ],
)
def test_address_kinds_do_not_depend_on_the_python_version(
    address: IPv4Address | IPv6Address, kind: str | None
) -> None:
    assert address_kind(address) == kind


# ---------------------------------------------------------------- lookups


@aio
async def test_a_name_that_does_not_resolve_is_refused_without_the_resolvers_words(
    stores: SqliteStores, sender: tuple[HttpWebhookSender, TableResolver]
) -> None:
    url = "https://nx.example.com/hook"
    management = WebhookManagement(stores.webhooks, WebhookDestinations(POLICY, TableResolver()))
    with pytest.raises(InvalidArgument, match="could not be resolved") as caught:
        await management.update_config(ACME, url, [], False)
    assert_says_nothing_internal(str(caught.value), url)
    sending, _ = sender
    assert await sending.send(url, b"{}", headers()) == "url host could not be resolved"


@aio
async def test_a_rebinding_name_passes_configuration_then_delivery_sends_nothing(
    stores: SqliteStores, listener: Listener
) -> None:
    """The name is public when configured and loopback when delivered: every attempt looks
    it up once, vets the answer and connects to nothing."""
    name = "rebind.example.com"
    resolver = TableResolver(names={name: ["127.0.0.1"]}, answers={name: [[PUBLIC_V4]]})
    rules = WebhookDestinations(POLICY, resolver)
    url = f"https://{name}:{listener.port}/hook"
    await WebhookManagement(stores.webhooks, rules).update_config(ACME, url, [], False)
    assert resolver.lookups == [(name + ".", listener.port)]
    await stores.wallets.register_wallet(ACME, "cus_a", "polygon", ADDR_1)
    sender = HttpWebhookSender(POLICY, rules)
    delivery = WebhookDelivery(stores.webhooks, sender, POLICY, destinations=rules)
    await delivery.start()
    try:
        emitter = WebhookEmitter(stores.webhooks, on_enqueued=delivery.wake)
        await emitter.balances_changed(block(1), [usdc(ADDR_1, 0, 1)], snapshot_of(block(1)))
        async with asyncio.timeout(10):
            while (await stores.webhooks.webhook_events())[0].status == "pending":  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # the store offers no event to wait on
    finally:
        await delivery.aclose()
        await sender.aclose()
    (event,) = await stores.webhooks.webhook_events()
    assert (event.status, event.attempts) == ("failed", 3)
    assert event.last_error == "url no longer allowed: url host resolves to a loopback address"
    assert listener.accepted == 0
    assert len(resolver.lookups) == 1 + 3  # configuration, then one per attempt


# ---------------------------------------------------------------- development receivers


@aio
async def test_a_development_receiver_by_name_gets_its_webhook_from_the_resolved_address(
    monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    """``devhook.example.com`` exists only in the test resolver: the webhook arrives, so
    the connector connected to the address that resolver gave.  A proxy in the
    environment (the listener) is not used."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{listener.port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{listener.port}")
    async with WebhookReceiver() as receiver:
        policy = WebhookPolicy((f"devhook.example.com:{receiver.port}",), 2.0, (0.01,))
        resolver = TableResolver(names={"devhook.example.com": ["127.0.0.1"]})
        rules = WebhookDestinations(policy, resolver)
        sender = HttpWebhookSender(policy, rules)
        try:
            dev = f"http://devhook.example.com:{receiver.port}{HOOK_PATH}"
            await rules.check(dev)
            assert await sender.send(dev, b"{}", headers()) is None
            assert len(receiver.received) == 1
            assert resolver.lookups[-1] == ("devhook.example.com", receiver.port)
            # The same host on another port is no development receiver.
            other = f"http://devhook.example.com:{listener.port}{HOOK_PATH}"
            refused = await sender.send(other, b"{}", headers())
            assert refused is not None and "must use https" in refused
            secure = f"https://devhook.example.com:{listener.port}{HOOK_PATH}"
            refused = await sender.send(secure, b"{}", headers())
            assert refused == "url no longer allowed: url host resolves to a loopback address"
        finally:
            await sender.aclose()
    assert listener.accepted == 0


@aio
async def test_a_development_receiver_on_one_of_the_services_own_ports_is_refused(
    stores: SqliteStores, listener: Listener
) -> None:
    """``serving_on`` is how the server says which ports it bound (port 0 included)."""
    policy = WebhookPolicy((f"127.0.0.1:{listener.port}",), 2.0, (0.01,))
    rules = WebhookDestinations(policy, TableResolver())
    url = f"http://127.0.0.1:{listener.port}/hook"
    rules.check_url(url)  # allowed while that port is someone else's
    rules.serving_on([50051, listener.port])
    management = WebhookManagement(stores.webhooks, rules)
    with pytest.raises(InvalidArgument, match="own ports") as caught:
        await management.update_config(ACME, url, [], False)
    assert_says_nothing_internal(str(caught.value), url)
    sender = HttpWebhookSender(policy, rules)
    try:
        refused = await sender.send(url, b"{}", headers())
    finally:
        await sender.aclose()
    assert refused == "url no longer allowed: url must not point at one of the service's own ports"
    assert listener.accepted == 0


# ---------------------------------------------------------------- the real resolver


@aio
async def test_the_system_resolver_reads_the_hosts_file_and_fails_as_an_oserror() -> None:
    resolver = SystemResolver()
    found = await resolver.resolve("localhost", 80)
    assert found and all(ip_address(a).is_loopback for a in found)
    with pytest.raises(OSError):
        await resolver.resolve("no-such-host.invalid.", 80)
    assert "nx.example.com" in NAMES  # the test table's failing name, for the reader
