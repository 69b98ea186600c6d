"""`buf breaking` (scripts/check_breaking.py, run by `make lint`) on scratch copies of protos/.

A renumbered field fails; an added field passes; a scratch git repository whose
last commit breaks balances.v1 fails the check as a fresh CI clone would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.check_breaking import ROOT, baseline_commit, breaking

pytestmark = [pytest.mark.integration]

PROTOS = ROOT / "protos"
BALANCES = Path("balances/v1/balances.proto")
FIELD = "  string wallet_id = 1;\n  // When to read the balances; neither: now (the network's"


def edited_copy(dest: Path, old: str, new: str) -> Path:
    """A copy of protos/ with one edit to balances.proto."""
    shutil.copytree(PROTOS, dest)
    source = (dest / BALANCES).read_text()
    assert source.count(old) == 1, old
    (dest / BALANCES).write_text(source.replace(old, new))
    return dest


def renumbered(dest: Path) -> Path:
    """GetWalletBalanceRequest.wallet_id moved from field 1 to 7: old clients break."""
    return edited_copy(dest, FIELD, FIELD.replace("= 1;", "= 7;"))


def test_a_renumbered_field_is_a_breaking_change(tmp_path: Path) -> None:
    done = breaking(renumbered(tmp_path / "protos"), PROTOS)
    assert done.returncode != 0
    assert "balances/v1/balances.proto" in done.stdout
    assert '"1" with name "wallet_id"' in done.stdout, done.stdout
    assert "GetWalletBalanceRequest" in done.stdout


def test_an_added_field_is_compatible(tmp_path: Path) -> None:
    added = FIELD.replace("= 1;\n", "= 1;\n  // A new optional hint.\n  string hint = 9;\n")
    done = breaking(edited_copy(tmp_path / "protos", FIELD, added), PROTOS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def scratch_repo(repo: Path) -> str:
    """A git repository with buf.yaml and today's protos/ committed; returns that commit."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shutil.copy(ROOT / "buf.yaml", repo / "buf.yaml")
    shutil.copytree(PROTOS, repo / "protos")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "balances.v1")
    return git(repo, "rev-parse", "HEAD")


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.check_breaking", "--root", str(repo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ci_fails_when_the_last_change_to_protos_breaks(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    first = scratch_repo(repo)
    assert baseline_commit(repo) == (
        None,
        f"{first[:12]}, the first commit of protos/, has no parent",
    )
    assert check(repo).returncode == 0

    shutil.rmtree(repo / "protos")
    renumbered(repo / "protos")
    git(repo, "commit", "-q", "-am", "renumber wallet_id")
    (repo / "NOTES").write_text("a later commit that leaves protos/ alone\n")
    git(repo, "add", "NOTES")
    git(repo, "commit", "-q", "-m", "notes")

    assert baseline_commit(repo)[0] == first  # HEAD's protos would compare with themselves
    done = check(repo)
    assert done.returncode != 0
    assert '"1" with name "wallet_id"' in done.stdout
    assert f"BREAKING CHANGE: protos/ against {first[:12]}, the parent of" in done.stdout


def test_an_uncommitted_breaking_change_fails_against_head(tmp_path: Path) -> None:
    repo = tmp_path / "work"
    head = scratch_repo(repo)
    shutil.rmtree(repo / "protos")
    renumbered(repo / "protos")
    assert baseline_commit(repo) == (head, "HEAD (protos/ has uncommitted changes)")
    done = check(repo)
    assert done.returncode != 0
    assert '"1" with name "wallet_id"' in done.stdout
