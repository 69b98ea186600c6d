"""Running the ``balances`` command: in this process through ``cli.main``, or as the console script.

``balances_main`` is the way to test a command: no process, the output captured
as a subprocess would see it.  ``run_balances`` runs the real console script,
for the few tests that need a real process (``serve``, signals, kill -9).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from service.cli import main
from service.settings import CONFIG_ENV_VAR
from tests.support.processes import run_tool

BALANCES = Path(sys.executable).parent / "balances"
SECRET = "SECRET-PROVIDER-KEY"
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"

# A valid config whose RPC URLs point nowhere: importing wallets never touches a chain.
OFFLINE_CONFIG = f"""
[directory]
path = "wallets.sqlite3"

[[networks]]
name = "polygon"
chain_id = 137
rpc_urls = ["http://127.0.0.1:9/v3/{SECRET}"]

[[networks.tokens]]
symbol = "USDC"
address = "{USDC}"
decimals = 6
price = {{ peg = "1" }}

[[networks]]
name = "ethereum"
chain_id = 1
rpc_urls = ["http://127.0.0.1:9/v3/{SECRET}"]

[[networks.tokens]]
symbol = "ETH"
native = true
decimals = 18
price = {{ peg = "3000" }}
"""


async def run_balances(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    """Run the console script ``balances ARGS`` to completion: (exit code, stdout, stderr)."""
    environment = {k: v for k, v in os.environ.items() if k != CONFIG_ENV_VAR}
    return await run_tool(
        str(BALANCES), *args, timeout=timeout, cwd=cwd, env=environment | (env or {})
    )


def balances_main(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """``balances ARGS`` in this process, through ``service.cli.main``: (exit code, stdout, stderr).

    As ``run_balances`` would run it: ``cwd`` as working directory, ``$BALANCES_CONFIG``
    unset unless ``env`` sets it, and what it logs written to its stderr.  The
    process's logging set-up, working directory and environment are restored after.
    Not for commands that install signal handlers (``serve`` past its config,
    ``gateway``, ``demo``).  From an async test: ``await asyncio.to_thread(balances_main, ...)``.
    """
    out, err = io.StringIO(), io.StringIO()
    with (
        _environment({CONFIG_ENV_VAR: None} | dict(env or {})),
        contextlib.chdir(cwd or Path.cwd()),
        _own_logging(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, stderr: str, *words: str) -> str:
    """A failure: non-zero exit, stderr one line holding ``words`` (and no secret); that line."""
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    for word in words:
        assert word in line, (word, line)
    assert SECRET not in line
    return line


@contextlib.contextmanager
def _environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            _set_env(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set_env(name, value)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def _own_logging() -> Iterator[None]:
    """Let ``setup_logging`` install its handler, then put pytest's handlers back.

    ``basicConfig(force=True)`` would close the handlers it finds, pytest's among them.
    """
    root = logging.getLogger()
    web3 = logging.getLogger("web3")
    saved_handlers, saved_level, saved_web3_level = root.handlers[:], root.level, web3.level
    root.handlers = []
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        web3.setLevel(saved_web3_level)
