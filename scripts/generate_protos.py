"""Regenerate generated/ from protos/ (the only way generated code is written).

Also copies google/api/*.proto from the installed googleapis-common-protos into
.build/googleapis so buf can lint without any network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import google.api

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "generated"
GOOGLEAPIS_COPY = ROOT / ".build" / "googleapis"


def googleapis_root() -> Path:
    """The site-packages directory holding google/api/*.proto."""
    return Path(next(iter(google.api.__path__))).parent.parent


def copy_googleapis() -> None:
    target = GOOGLEAPIS_COPY / "google" / "api"
    shutil.rmtree(GOOGLEAPIS_COPY, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("annotations.proto", "http.proto"):
        shutil.copy(googleapis_root() / "google" / "api" / name, target / name)


def generate() -> None:
    shutil.rmtree(GENERATED / "balances", ignore_errors=True)
    GENERATED.mkdir(exist_ok=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{googleapis_root()}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={GENERATED}",
            f"--grpc_python_out={GENERATED}",
            f"--mypy_out={GENERATED}",
            f"--mypy_grpc_out={GENERATED}",
            *sources,
        ],
        check=True,
        cwd=PROTOS,
    )
    # Make every directory holding generated modules an importable package.
    for module in GENERATED.rglob("*_pb2.py"):
        directory = module.parent
        while directory != GENERATED:
            (directory / "__init__.py").touch()
            directory = directory.parent


if __name__ == "__main__":
    copy_googleapis()
    generate()
