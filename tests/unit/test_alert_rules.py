"""deploy/alerts.yaml names only metrics the server defines (``service.metrics``).

``promtool check rules`` (``make lint``) checks the rules' syntax; this checks
their meaning cannot drift from the code: a renamed metric fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import service.metrics  # noqa: F401 - registers every series

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "alerts.yaml"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed_names() -> set[str]:
    """Every sample name the registry can expose, children or not."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_metric_an_alert_uses_is_defined() -> None:
    exposed = exposed_names()
    used = {
        name
        for rule in alert_rules()
        for name in re.findall(r"\bbalances_[a-z_]+", str(rule["expr"]))
    }
    assert used, "no balances_* metric found in the alert expressions"
    assert used <= exposed, sorted(used - exposed)


def test_the_issue_s_alerts_are_all_there() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "BalancesNoReadableNetwork",
        "BalancesProviderFailingOver",
        "BalancesFollowerLagging",
        "BalancesWebhookBacklogGrowing",
        "BalancesStaleAnswers",
        "BalancesRateLimited",
    } <= names


def test_a_misspelt_metric_would_be_caught() -> None:
    assert "balances_follower_lag_block" not in exposed_names()
    assert "balances_grpc_requests_total" in exposed_names()
