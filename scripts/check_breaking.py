"""``buf breaking`` for balances.v1: fail on a breaking change to protos/ (make lint, CI).

The protos are compared with those of a baseline commit:

* protos/ has uncommitted changes: HEAD, so the pending change is checked;
* otherwise: the parent of the last commit that changed protos/. A fresh clone
  (CI) thus checks the most recent change, instead of comparing HEAD with itself.

A repository whose only change to protos/ is its first commit has nothing to
compare with; a shallow clone that lacks the parent fails (the check would
otherwise pass without checking anything).

Both sides are built in scratch buf workspaces laid out like the repository's
(buf.yaml, protos/, .build/googleapis), with google/api from the installed
googleapis-common-protos: no network, and no dependence on `make generate`.

Usage: python -m scripts.check_breaking [--root REPO]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from scripts.generate_protos import googleapis_root

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "node_modules" / ".bin" / "buf"
GOOGLEAPIS_FILES = ("google/api/annotations.proto", "google/api/http.proto")


def _git_command(root: Path, *args: str) -> list[str]:
    git = shutil.which("git")
    if git is None:
        raise SystemExit("git not found on PATH")
    return [git, "-C", str(root), *args]


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(_git_command(root, *args), capture_output=True, text=True, check=True)
    return done.stdout.strip()


def baseline_commit(root: Path) -> tuple[str | None, str]:
    """(the commit whose protos/ the current ones must stay compatible with, why)."""
    if _git(root, "status", "--porcelain", "--", "protos"):
        return _git(root, "rev-parse", "HEAD"), "HEAD (protos/ has uncommitted changes)"
    last = _git(root, "log", "-1", "--format=%H", "--", "protos")
    if not last:
        return None, "no commit has changed protos/"
    parents = _git(root, "rev-list", "--parents", "-n", "1", last).split()[1:]
    if not parents:
        return None, f"{last[:12]}, the first commit of protos/, has no parent"
    try:
        _git(root, "cat-file", "-e", f"{parents[0]}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(
            f"shallow clone: {parents[0][:12]} is missing; fetch the history"
        ) from None
    return parents[0], f"{parents[0][:12]}, the parent of {last[:12]} (the last change to protos/)"


def export_protos(root: Path, commit: str, dest: Path) -> Path:
    """protos/ as of ``commit``, written under ``dest`` (the work tree is not touched)."""
    archive = subprocess.run(
        _git_command(root, "archive", "--format=tar", commit, "protos"),
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "protos"


def workspace(dest: Path, protos: Path, buf_yaml: Path) -> Path:
    """A buf workspace in ``dest`` shaped like the repository's, holding ``protos``."""
    dest.mkdir(parents=True)
    shutil.copy(buf_yaml, dest / "buf.yaml")
    shutil.copytree(protos, dest / "protos")
    for name in GOOGLEAPIS_FILES:
        target = dest / ".build" / "googleapis" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(googleapis_root() / name, target)
    return dest


def breaking(
    protos: Path, against: Path, buf_yaml: Path = ROOT / "buf.yaml"
) -> subprocess.CompletedProcess[str]:
    """``buf breaking`` of ``protos`` against ``against`` (both protos/ directories)."""
    with tempfile.TemporaryDirectory(prefix="buf-breaking-") as scratch:
        current = workspace(Path(scratch) / "current", protos, buf_yaml)
        baseline = workspace(Path(scratch) / "baseline", against, buf_yaml)
        # Run inside the workspace so buf names files as protos/balances/v1/...
        return subprocess.run(
            [str(BUF), "breaking", ".", "--against", str(baseline)],
            cwd=current,
            capture_output=True,
            text=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository to check")
    root = parser.parse_args(argv).root.resolve()
    commit, why = baseline_commit(root)
    if commit is None:
        print(f"buf breaking: skipped, {why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="buf-baseline-") as scratch:
        against = export_protos(root, commit, Path(scratch))
        done = breaking(root / "protos", against, root / "buf.yaml")
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    verdict = "ok" if done.returncode == 0 else "BREAKING CHANGE"
    print(f"buf breaking: {verdict}: protos/ against {why}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
