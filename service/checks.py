"""Value rules shared by the self-validating settings types: durations, ranges, listen addresses."""

from __future__ import annotations

import math
from typing import Any

from service.errors import ConfigError

__all__ = ["check_int_between", "check_listen", "normalise", "positive_seconds"]


def positive_seconds(key: str, value: object) -> float:
    """A duration: a finite number above zero (TOML has inf and nan; neither is a duration)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(key, "must be a positive number of seconds")
    return float(value)


def check_int_between(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}")


def check_listen(key: str, listen: str) -> None:
    """``HOST:PORT`` with a port from 0 (any free port) to 65535."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, "must be HOST:PORT, e.g. 127.0.0.1:50051")


def normalise(instance: object, name: str, value: Any) -> None:
    """Store the canonical form of a field of a frozen dataclass (from its ``__post_init__``)."""
    object.__setattr__(instance, name, value)
