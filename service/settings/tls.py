"""TLS settings and their checks: every PEM file readable, certificates, a matching unencrypted key.

The files are read and parsed when ``TlsSettings`` is built, so a bad file
fails at start in one line, never at the first handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from service.errors import ConfigError

__all__ = ["TlsSettings"]


@dataclass(frozen=True)
class TlsSettings:
    """A server certificate and key (PEM), checked to load at start.

    ``client_ca_file`` (gRPC only) turns on mutual TLS: every client must
    present a certificate issued by one of those CAs.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def __post_init__(self) -> None:
        _check_readable("cert_file", self.cert_file)
        _check_readable("key_file", self.key_file)
        if self.client_ca_file is not None:
            _check_readable("client_ca_file", self.client_ca_file)
        _check_certificates("cert_file", self.cert_file)
        if self.client_ca_file is not None:
            _check_certificates("client_ca_file", self.client_ca_file)
        _check_key("key_file", self.cert_file, self.key_file)


class _EncryptedKey(Exception):
    """Raised by the password callback: keys must be unencrypted (nobody types a passphrase)."""


def _refuse_password() -> bytes:
    raise _EncryptedKey


def _check_readable(key: str, path: Path) -> None:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(key, f"cannot read {str(path)!r}: {exc}") from exc


def _check_certificates(key: str, path: Path) -> None:
    """The file holds at least one PEM certificate (a chain, or a bundle of CAs)."""
    try:
        text = path.read_text(encoding="ascii")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (OSError, UnicodeDecodeError, ValueError, ssl.SSLError) as exc:
        raise ConfigError(key, f"{path}: not a PEM certificate file") from exc


def _check_key(key: str, cert_file: Path, key_file: Path) -> None:
    """The key loads without a passphrase and matches the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKey as exc:
        raise ConfigError(key, f"{key_file}: encrypted keys are not supported") from exc
    except OSError as exc:  # ssl.SSLError, or the file went away since it was read
        raise ConfigError(
            key,
            f"{key_file}: not a PEM private key matching cert_file"
            f" ({getattr(exc, 'reason', None) or exc.strerror or 'no usable key in the file'})",
        ) from exc
