"""``balances serve --workers N``: N is a whole number of at least 1, or a clear usage error."""

from __future__ import annotations

import pytest

from tests.support.cli import balances_main


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", ""])
def test_a_bad_worker_count_is_a_usage_error_naming_the_option(bad: str) -> None:
    code, out, err = balances_main("serve", "--workers", bad, "--config", "missing.toml")
    assert code == 2
    assert out == ""
    assert f"argument --workers: must be a whole number of at least 1, not {bad!r}" in err
    assert "Traceback" not in err
