"""Every failure of the ``balances`` command is one line on stderr and a non-zero exit (in-process)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.cli import main
from tests.support.cli import OFFLINE_CONFIG, SECRET


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert SECRET not in err
    return lines[0]


def test_migrate_on_a_newer_schema_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG)
    with sqlite3.connect(tmp_path / "wallets.sqlite3") as connection:
        connection.execute("PRAGMA user_version = 99")
    code = main(["db", "migrate", "--config", str(config)])
    one_line_error(capsys, code, "99", "newer")


def test_unreadable_import_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG)
    code = main(["wallets", "import", str(tmp_path / "missing.json"), "--config", str(config)])
    one_line_error(capsys, code, "missing.json")


def test_bad_config_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "balances.toml"
    config.write_text(OFFLINE_CONFIG.replace("decimals = 6", "decimals = 600"))
    code = main(["db", "migrate", "--config", str(config)])
    assert code == 2
    one_line_error(capsys, code, "networks[0].tokens[0].decimals")
