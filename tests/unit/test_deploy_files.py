"""The deploy files, checked statically (containers cannot run here): they parse, and every
name one of them uses is defined where it points (services, secrets, configs, ports)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRETS_DIR = "/run/secrets/"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == "serve"
    }


def test_compose_names_only_what_it_defines(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "proxy"} <= set(services)
    assert len(_replicas(compose)) == 2  # two replicas behind one port
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, (name, needed)
            assert needed != name
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], (name, secret)
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"], (name, config)
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose.get("volumes", {}), (name, volume)
    for config in compose["configs"].values():
        assert (DEPLOY / config["file"]).is_file(), config
    for secret in compose["secrets"].values():
        # Made by whoever deploys (README), kept out of git by deploy/.gitignore.
        assert secret["file"].startswith("./secrets/"), secret
    assert "secrets/" in (DEPLOY / ".gitignore").read_text().split()
    published = {port.split(":")[-1] for port in services["proxy"]["ports"]}
    assert published == {"50051", "8080"}


def test_replica_config_loads_and_points_at_the_compose_services(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    [config] = {
        c["target"]: c["source"] for s in _replicas(compose).values() for c in s["configs"]
    }.items()
    assert compose["configs"][config[1]]["file"] == "./balances.toml"
    text = (DEPLOY / "balances.toml").read_text()
    # The password files are Docker secrets the replicas mount: stand-ins here.
    for name in re.findall(re.escape(SECRETS_DIR) + r"(\w+)", text):
        for replica in _replicas(compose).values():
            assert name in replica["secrets"], name
        (tmp_path / name).write_text("not-a-real-password\n")
    local = tmp_path / "balances.toml"
    local.write_text(text.replace(SECRETS_DIR, f"{tmp_path}/"))
    settings = load_settings(local, {})
    services = compose["services"]
    assert settings.directory_url is not None and settings.cache_redis_url is not None
    assert urlsplit(settings.directory_url).hostname in services
    assert urlsplit(settings.cache_redis_url).hostname in services
    assert "not-a-real-password" not in settings.directory_url + settings.cache_redis_url
    assert settings.rest is not None
    ports = {settings.listen.rpartition(":")[2], settings.rest.listen.rpartition(":")[2]}
    # nginx sends each port to every replica, on the ports the config listens on.
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstreams = re.findall(r"server ([\w-]+):(\d+);", nginx)
    assert {host for host, _ in upstreams} == set(_replicas(compose))
    assert {port for _, port in upstreams} == ports
    # The image's health check asks the port the replicas serve gRPC on.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'"--target", "127.0.0.1:{settings.listen.rpartition(":")[2]}"' in dockerfile
    assert 'ENTRYPOINT ["balances"]' in dockerfile


def test_the_image_context_holds_what_the_dockerfile_copies() -> None:
    copied = re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied and {path.rstrip("/") for path in copied} <= kept
    for path in copied:
        assert (ROOT / path).exists(), path
