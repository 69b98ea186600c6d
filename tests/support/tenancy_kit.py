"""Shared by the wallet-API and tenancy tests: keys, a REST gateway, calls, and a log spy.

``new_key`` makes an API key for a tenant in a running stack and remembers
its plaintext, so ``LogSpy.assert_no_key_material`` can check every captured
log line against every key (and digest) the tests ever used.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from balances.v1 import balances_pb2_grpc, wallets_pb2_grpc
from service.api.services import API_SERVICES
from service.auth.keys import hash_key, new_api_key
from service.gateway.app import build_gateway_app
from service.gateway.limits import RestLimits
from service.gateway.routes import routes_of
from service.logs import setup_logging
from tests.support.rest import Gateway, serve_gateway
from tests.support.stack import Stack

LIMITS = RestLimits(max_body_bytes=4096, body_read_timeout_seconds=1.0)

# Every plaintext key the tests made or used, for the log checks.
KNOWN_KEYS: set[str] = set()


async def new_key(stack: Stack, tenant: str) -> str:
    """A new API key of ``tenant``, stored (digest only) in the stack's live key store."""
    key = new_api_key()
    KNOWN_KEYS.add(key.plaintext)
    await stack.service.stores.api_keys.add_key(key.key_id, tenant, key.digest)
    return key.plaintext


def remember(*keys: str) -> None:
    """Count ``keys`` (sent by a test, valid or not) among those no log line may hold."""
    KNOWN_KEYS.update(keys)


def key_id(plaintext: str) -> str:
    return plaintext.split("_")[1]


class Stubs:
    """Both services' stubs on one channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self.balances = balances_pb2_grpc.BalancesServiceStub(channel)
        self.wallets = wallets_pb2_grpc.WalletsServiceStub(channel)


async def outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, Any]:
    """(code, details, response or None) of one unary call."""
    try:
        response = await call
    except aio.AioRpcError as error:
        return error.code(), error.details() or "", None
    return grpc.StatusCode.OK, "", response


@asynccontextmanager
async def served_gateway(stack: Stack, api_key: str | None = None) -> AsyncIterator[Gateway]:
    """The REST shim for both services over the stack's key-less channel, on a free port.

    ``api_key`` is sent as ``X-API-Key`` on every request unless a request overrides it.
    """
    app = build_gateway_app(stack.channel, routes_of(API_SERVICES), LIMITS, title="Balances")
    runner, base = await serve_gateway(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield Gateway(base, http, {"X-API-Key": api_key} if api_key else {})
    finally:
        await runner.cleanup()


class _ListHandler(logging.Handler):
    """Keeps every record's fully rendered text (message and traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + record.stack_info
        self.lines.append(f"{record.name}: {text}")


class LogSpy:
    """What was logged: every record as emitted, and the service's own handler's output."""

    def __init__(self, records: _ListHandler, service_output: io.StringIO) -> None:
        self._records = records
        self._service_output = service_output

    def text(self) -> str:
        return "\n".join(self._records.lines) + "\n" + self._service_output.getvalue()

    def assert_no_key_material(self, keys: Iterable[str]) -> None:
        """No key, no 16-character run of a key's secret, no digest (hex or base64)."""
        text = self.text()
        lowered = text.lower()
        for key in set(keys):
            secret = key.split("_", 2)[2] if key.startswith("bk_") else key
            assert key not in text, "an API key was logged"
            for start in range(max(len(secret) - 15, 1)):
                assert secret[start : start + 16] not in text, "part of a key's secret was logged"
            digest = hash_key(key)
            assert digest.hex() not in lowered, "a key digest was logged"
            assert base64.b64encode(digest).decode() not in text, "a key digest was logged"
            assert base64.urlsafe_b64encode(digest).decode() not in text


@contextmanager
def captured_logs() -> Iterator[LogSpy]:
    """Everything logged at DEBUG and up, through the service's real handler (setup_logging).

    The service's stderr handler is installed as in production and pointed at a
    buffer; pytest's own handlers stay attached and everything is restored after.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    web3 = logging.getLogger("web3")
    saved_web3_level = web3.level
    records = _ListHandler()
    service_output = io.StringIO()
    root.handlers = []  # basicConfig(force=True) would close pytest's handlers
    try:
        setup_logging(level="DEBUG")
        (service_handler,) = root.handlers
        assert isinstance(service_handler, logging.StreamHandler)
        service_handler.setStream(service_output)
        # The raw records first: the service handler's filter rewrites each record.
        root.handlers = [records, service_handler, *saved_handlers]
        yield LogSpy(records, service_output)
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        web3.setLevel(saved_web3_level)


@contextmanager
def no_key_material_logged(request: pytest.FixtureRequest) -> Iterator[LogSpy]:
    """For an autouse fixture: capture a test's logs (its ``stack`` set-up and tear-down
    included) and fail it if any key it or an earlier test used shows up in them."""
    with captured_logs() as logs:
        stack = request.getfixturevalue("stack") if "stack" in request.fixturenames else None
        yield logs
    logs.assert_no_key_material({*KNOWN_KEYS, *([stack.api_key] if stack else [])})
