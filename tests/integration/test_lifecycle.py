"""Process lifecycle: every start registers its stop, so a failed start leaves nothing serving."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from service.devchain.world import DemoWorld
from service.errors import CannotListen
from service.run import serve
from service.settings import load_settings
from tests.support.cli import run_balances
from tests.support.stack import write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_rest_bind_failure_stops_grpc_too(world: DemoWorld, tmp_path: Path) -> None:
    """When the REST port is taken, ``serve`` fails and the gRPC port is closed again.

    Before, gRPC kept accepting connections backed by a closed directory.
    """
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        rest_port = taken.getsockname()[1]
        config = await write_stack_config(
            world,
            tmp_path,
            {name: [network.rpc_url] for name, network in world.networks.items()},
            extra_toml=f'\n[rest]\nlisten = "127.0.0.1:{rest_port}"\n',
        )
        grpc_port = free_port()
        settings = replace(load_settings(config.path), listen=f"127.0.0.1:{grpc_port}")
        with pytest.raises(CannotListen):
            await serve(settings, stop=asyncio.Event())
    finally:
        taken.close()
    with pytest.raises(ConnectionRefusedError):
        _reader, writer = await asyncio.open_connection("127.0.0.1", grpc_port)
        writer.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_grpc_port_in_use_is_a_one_line_error(world: DemoWorld, tmp_path: Path) -> None:
    """A second server on a taken port fails to start, in one line (no SO_REUSEPORT sharing)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        config = await write_stack_config(
            world,
            tmp_path,
            {name: [network.rpc_url] for name, network in world.networks.items()},
        )
        text = config.path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"', 1)
        assert f"127.0.0.1:{port}" in text
        config.path.write_text(text)
        code, _out, err = await run_balances("serve", "--config", str(config.path), cwd=tmp_path)
    finally:
        taken.close()
    # serve logs as it starts (and grpc's core logs the failed bind): the error itself
    # is one line, and no traceback.
    assert code != 0
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("balances:")]
    assert line == f"balances: cannot listen on 127.0.0.1:{port}: the address is in use"
