"""Transport security: gRPC over TLS and mTLS, REST over TLS, with certificates made at test time.

A real server (``service.run.serve``, in-process) over the session's chains.
Health (open, no API key) proves a TLS connection works; a Balances RPC without
a key fails UNAUTHENTICATED, which also proves the handshake succeeded.  With
mTLS on gRPC, the REST gateway still answers: it reaches gRPC over its private
Unix socket, where the same auth applies.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service import children
from service import run as run_module
from service.devchain.world import DemoWorld
from service.run import ServingPorts, serve
from service.settings import Settings, load_settings
from service.tls import PrivateSocket
from tests.support.cli import BALANCES
from tests.support.stack import write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVING = health_pb2.HealthCheckResponse.SERVING
WALLET = "wal_alice_polygon"


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate; as files too."""

    dir: Path
    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    other_ca: trustme.CA  # a CA nobody trusts

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def client_credentials(
        self, *, trust: trustme.CA | None = None, client: trustme.LeafCert | None = None
    ) -> grpc.ChannelCredentials:
        trusted = (trust or self.ca).cert_pem.bytes()
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=trusted)
        return grpc.ssl_channel_credentials(
            root_certificates=trusted,
            private_key=client.private_key_pem.bytes(),
            certificate_chain=b"".join(p.bytes() for p in client.cert_chain_pems),
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.balances.test")
    pem = tmp_path / "pki"
    pem.mkdir()
    (pem / "server.pem").write_bytes(b"".join(c.bytes() for c in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(pem / "server.key"))
    ca.cert_pem.write_to_path(str(pem / "ca.pem"))
    (pem / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    return Pki(pem, ca, server, client, trustme.CA())


def tls_toml(*, client_ca: bool, rest: bool) -> str:
    """Appended to the stack config (which has [server] but no [rest]); paths relative to it."""
    lines = [
        "[server.tls]",
        'cert_file = "pki/server.pem"',
        'key_file = "pki/server.key"',
        *(['client_ca_file = "pki/ca.pem"'] if client_ca else []),
        "",
    ]
    if rest:
        lines += [
            "[rest]",
            'listen = "127.0.0.1:0"',
            "[rest.tls]",
            'cert_file = "pki/server.pem"',
            'key_file = "pki/server.key"',
            "",
        ]
    return "\n".join(lines)


@dataclass
class Served:
    settings: Settings
    ports: ServingPorts
    api_key: str
    sockets: list[PrivateSocket]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def rest_url(self) -> str:
        assert self.ports.rest is not None
        return f"https://127.0.0.1:{self.ports.rest}"


class RecordingSocket(PrivateSocket):
    """A PrivateSocket the test can find, to check its directory and its removal."""

    made: list[PrivateSocket] = []

    def __init__(self) -> None:
        super().__init__()
        RecordingSocket.made.append(self)


@asynccontextmanager
async def serving(
    world: DemoWorld, tmp_path: Path, extra_toml: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    config = await write_stack_config(
        world,
        tmp_path,
        {name: [network.rpc_url] for name, network in world.networks.items()},
        extra_toml=extra_toml,
    )
    settings = load_settings(config.path)

    RecordingSocket.made = []
    monkeypatch.setattr(run_module, "PrivateSocket", RecordingSocket)
    stop = asyncio.Event()
    ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, on_ready=ready.set_result, stop=stop))
    try:
        async with asyncio.timeout(30):
            await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        yield Served(settings, ready.result(), config.api_key, list(RecordingSocket.made))
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def health_check(channel: aio.Channel) -> health_pb2.HealthCheckResponse:
    stub = health_pb2_grpc.HealthStub(channel)
    response: health_pb2.HealthCheckResponse = await stub.Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return response


async def check_fails_unavailable(channel: aio.Channel) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await health_check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value


async def test_grpc_tls_needs_a_tls_client_that_trusts_the_ca(
    world: DemoWorld, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tls_toml(client_ca=False, rest=False)
    async with serving(world, tmp_path, toml, monkeypatch) as served:
        assert served.sockets == []  # no REST: no private socket either
        async with aio.secure_channel(served.grpc_target, pki.client_credentials()) as channel:
            assert (await health_check(channel)).status == SERVING
            # The API is there too, behind its key: UNAUTHENTICATED without, data with.
            balances = balances_pb2_grpc.BalancesServiceStub(channel)
            request = pb.GetWalletBalanceRequest(wallet_id=WALLET)
            with pytest.raises(aio.AioRpcError) as caught:
                await balances.GetWalletBalance(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            response = await balances.GetWalletBalance(
                request, timeout=10, metadata=(("x-api-key", served.api_key),)
            )
            assert response.wallet_id == WALLET

        async with aio.insecure_channel(served.grpc_target) as plaintext:
            await check_fails_unavailable(plaintext)
        other = pki.client_credentials(trust=pki.other_ca)
        async with aio.secure_channel(served.grpc_target, other) as wrong_ca:
            await check_fails_unavailable(wrong_ca)


async def test_grpc_mtls_requires_a_client_certificate_from_the_client_ca(
    world: DemoWorld, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tls_toml(client_ca=True, rest=False)
    async with serving(world, tmp_path, toml, monkeypatch) as served:
        with_cert = pki.client_credentials(client=pki.client)
        async with aio.secure_channel(served.grpc_target, with_cert) as channel:
            assert (await health_check(channel)).status == SERVING

        async with aio.secure_channel(served.grpc_target, pki.client_credentials()) as no_cert:
            await check_fails_unavailable(no_cert)
        stranger = pki.client_credentials(client=pki.other_ca.issue_cert("stranger.test"))
        async with aio.secure_channel(served.grpc_target, stranger) as foreign_cert:
            await check_fails_unavailable(foreign_cert)


async def test_rest_tls_reaches_grpc_over_the_private_socket_while_grpc_demands_mtls(
    world: DemoWorld, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tls_toml(client_ca=True, rest=True)
    async with serving(world, tmp_path, toml, monkeypatch) as served:
        (private,) = served.sockets
        info = os.stat(private.directory)
        assert stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
        assert stat.S_ISSOCK(os.stat(private.path).st_mode)

        trusting = ssl.create_default_context()
        pki.ca.configure_trust(trusting)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as http:
            async with http.get(f"{served.rest_url}/openapi.json") as reply:
                assert reply.status == 200
                assert "paths" in await reply.json()

            url = f"{served.rest_url}/v1/wallets/{WALLET}/balance"
            async with http.get(url, headers={"X-API-Key": served.api_key}) as reply:
                body = await reply.json()
                assert reply.status == 200, body
                assert body["walletId"] == WALLET
            # Auth runs on the private socket too: the gateway is no way around it.
            async with http.get(url) as reply:
                assert reply.status == 401
                assert reply.content_type == "application/json"
                assert "message" in await reply.json()

        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(f"http://127.0.0.1:{served.ports.rest}/openapi.json"):
                    pass
        untrusting = ssl.create_default_context()
        pki.other_ca.configure_trust(untrusting)
        async with aiohttp.ClientSession() as wrong_ca:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with wrong_ca.get(f"{served.rest_url}/openapi.json", ssl=untrusting):
                    pass

    assert not private.directory.exists()  # removed on shutdown


async def test_plain_rest_and_grpc_also_use_the_private_socket(
    world: DemoWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any TLS (the demo's set-up) the gateway goes through the Unix socket too."""
    toml = '[rest]\nlisten = "127.0.0.1:0"\n'
    async with serving(world, tmp_path, toml, monkeypatch) as served:
        (private,) = served.sockets
        assert stat.S_ISSOCK(os.stat(private.path).st_mode)
        url = f"http://127.0.0.1:{served.ports.rest}/v1/wallets/{WALLET}/balance"
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers={"X-API-Key": served.api_key}) as reply,
        ):
            body = await reply.json()
            assert reply.status == 200, body
            assert body["walletId"] == WALLET
        async with aio.insecure_channel(served.grpc_target) as channel:
            assert (await health_check(channel)).status == SERVING
    assert not private.directory.exists()


async def test_private_socket_directory_is_owner_only_and_removed_on_close() -> None:
    private = PrivateSocket()
    try:
        info = os.lstat(private.directory)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert private.target == f"unix:{private.directory}/grpc.sock"
        assert len(str(private.path)) < 100  # fits sun_path
    finally:
        private.close()
    assert not private.directory.exists()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("pki/server.pem", "pki/missing.pem"), "server.tls.cert_file"),
        (("pki/server.key", "pki/garbage.key"), "server.tls.key_file"),
    ],
    ids=["missing cert file", "garbage key file"],
)
async def test_balances_serve_rejects_a_bad_tls_file_in_one_line(
    world: DemoWorld, tmp_path: Path, pki: Pki, edit: tuple[str, str], key: str
) -> None:
    good = tls_toml(client_ca=False, rest=False)
    config = await write_stack_config(
        world,
        tmp_path,
        {name: [network.rpc_url] for name, network in world.networks.items()},
        extra_toml=good,
    )
    text = await asyncio.to_thread(config.path.read_text)
    await asyncio.to_thread(config.path.write_text, text.replace(good, good.replace(*edit)))
    process = await children.create_subprocess_exec(
        str(BALANCES),
        "serve",
        "--config",
        str(config.path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2, lines
    assert len(lines) == 1, lines  # no traceback
    assert lines[0].startswith(f"balances: configuration error: {key}: "), lines
