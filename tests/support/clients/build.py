"""Generate, compile and run the balances.v1 clients in other languages (buf.gen.yaml).

Nothing here touches a network: buf runs local plugins (protoc-gen-es from
node_modules, protoc-gen-go and protoc-gen-go-grpc from Debian), tsc compiles
against node_modules, and Go builds in GOPATH mode against Debian's packaged
sources in /usr/share/gocode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import google.rpc

ROOT = Path(__file__).resolve().parents[3]
NODE_BIN = ROOT / "node_modules" / ".bin"
CLIENTS = Path(__file__).resolve().parent
DEBIAN_GOPATH = Path("/usr/share/gocode")
# Compiled Go packages are kept between runs (like .build/googleapis, never committed).
GO_CACHE = ROOT / ".build" / "go-cache"
# The same plugin as buf.gen.yaml's, for ErrorInfo and the other google.rpc details:
# error_details.proto comes from the installed googleapis-common-protos.
ERROR_DETAILS_TEMPLATE = (
    '{"version": "v2", "plugins": [{"local": "protoc-gen-es", "out": "ts",'
    ' "opt": ["target=ts", "import_extension=js"]}]}'
)


def _run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(
            f"{command[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )


def _env_with_node_bin() -> dict[str, str]:
    return {**os.environ, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def generate(out: Path) -> None:
    """Run buf.gen.yaml into ``out`` (ts/ and go/src/), plus google.rpc details for TypeScript."""
    env = _env_with_node_bin()
    buf = str(NODE_BIN / "buf")
    _run([buf, "generate", "--template", "buf.gen.yaml", "--output", str(out)], cwd=ROOT, env=env)
    rpc = out / "proto-google-rpc"
    (rpc / "google" / "rpc").mkdir(parents=True)
    source = Path(next(iter(google.rpc.__path__))) / "error_details.proto"
    shutil.copy(source, rpc / "google" / "rpc" / "error_details.proto")
    _run(
        [buf, "generate", str(rpc), "--template", ERROR_DETAILS_TEMPLATE, "--output", str(out)],
        cwd=ROOT,
        env=env,
    )


def ts_project(out: Path, *sources: Path) -> Path:
    """A TypeScript project in ``out``/ts: the generated code, ``sources``, and node_modules."""
    project = out / "ts"
    for source in sources:
        shutil.copy(source, project / source.name)
    shutil.copy(CLIENTS / "ts" / "tsconfig.json", project / "tsconfig.json")
    (project / "package.json").write_text('{"type": "module", "private": true}\n')
    # Imports resolve up the tree: the project sees the repository's node_modules.
    link = project / "node_modules"
    if not link.exists():
        link.symlink_to(ROOT / "node_modules", target_is_directory=True)
    return project


def compile_ts(project: Path) -> subprocess.CompletedProcess[str]:
    """``tsc -p`` (strict type check, then emit to dist/); the caller checks the result."""
    return subprocess.run(
        [str(NODE_BIN / "tsc"), "-p", str(project)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


def build_ts_client(out: Path) -> list[str]:
    """Compile the TypeScript client; returns the command that runs it."""
    project = ts_project(out, CLIENTS / "ts" / "balances_client.ts")
    done = compile_ts(project)
    assert done.returncode == 0, done.stdout + done.stderr
    node = shutil.which("node")
    assert node is not None, "node not found on PATH"
    return [node, str(project / "dist" / "balances_client.js")]


def go_env(out: Path) -> dict[str, str]:
    """GOPATH mode: the generated packages first, then Debian's; no module proxy."""
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOPATH": f"{out / 'go'}{os.pathsep}{DEBIAN_GOPATH}",
        "GOCACHE": str(GO_CACHE),
    }


def build_go_client(out: Path) -> list[str]:
    """Build the Go client; returns the command that runs it."""
    go = shutil.which("go")
    assert go is not None, "go not found on PATH: .ci/run installs golang-go"
    binary = out / "balances_client_go"
    source = CLIENTS / "go" / "balances_client.go"
    _run([go, "build", "-o", str(binary), str(source)], cwd=out, env=go_env(out))
    return [str(binary)]
