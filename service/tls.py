"""Transport security from validated settings, and the gateway's private gRPC socket.

``grpc_server_credentials`` and ``rest_ssl_context`` turn ``TlsSettings`` (whose
files ``service.settings.tls`` already proved readable and loadable) into what grpc
and aiohttp take.  ``PrivateSocket`` is a Unix socket in a fresh 0700 directory:
the in-process REST gateway reaches gRPC through it, so it keeps working when
the public port demands client certificates, and nothing else can connect.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import tempfile
from pathlib import Path

import grpc

from service.settings.tls import TlsSettings

__all__ = ["PrivateSocket", "grpc_server_credentials", "rest_ssl_context"]

# sun_path is 108 bytes on Linux (104 on BSDs); a long $TMPDIR must not break start-up.
_MAX_SOCKET_PATH = 100


def grpc_server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """TLS for the public gRPC port; with ``client_ca_file``, client certificates are required."""
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def rest_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server-side context for the REST port: TLS 1.2 or later, no client certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
    return context


def _no_passphrase() -> bytes:
    # Never let OpenSSL prompt on a terminal; service.settings.tls already rejects encrypted keys.
    raise ValueError("encrypted private keys are not supported")


class PrivateSocket:
    """``unix:<dir>/grpc.sock`` in a new directory only this user can enter; removed on close."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="balances-", dir=_socket_parent()))
        info = os.lstat(self.directory)
        # mkdtemp makes it 0700 and ours; check anyway, since safety rests on it.
        if stat.S_IMODE(info.st_mode) != 0o700 or info.st_uid != os.getuid():
            self.close()
            raise OSError(f"{self.directory}: private socket directory is not 0700 and ours")
        self.path = self.directory / "grpc.sock"

    @property
    def target(self) -> str:
        return f"unix:{self.path}"

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _socket_parent() -> str:
    parent = tempfile.gettempdir()
    if len(parent) + len("/balances-XXXXXXXX/grpc.sock") > _MAX_SOCKET_PATH:
        parent = "/tmp"  # noqa: S108 - mkdtemp makes a fresh 0700 directory there
    return parent
