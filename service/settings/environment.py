"""Settings from the environment: every key of the TOML file as ``BALANCES_<SECTION>__<KEY>``.

A variable's name is its key's path in the file, upper case, the parts joined
by two underscores: ``[server] listen`` is ``BALANCES_SERVER__LISTEN``,
``[rest.tls] cert_file`` is ``BALANCES_REST__TLS__CERT_FILE``, ``[limits.tenants.acme]
burst`` is ``BALANCES_LIMITS__TENANTS__ACME__BURST``.  An array of tables is
indexed from 0: ``BALANCES_NETWORKS__0__RPC_URLS``,
``BALANCES_NETWORKS__0__TOKENS__1__ADDRESS``; the index just past the file's
last entry adds one.  A name without ``__`` (``BALANCES_CONFIG``,
``BALANCES_LOG_LEVEL``) is not a key.

Each variable is put in the parsed file at its key (over the file's value)
before the file is checked, so the checks are the file's own; an error about a
key a variable set names the variable.  The text becomes a value by the key's
type: a string or path key takes it as it is; any other key takes a TOML value
(``30``, ``0.5``, ``true``, ``["https://a.example/v3/KEY", "https://b.example"]``,
``{ peg = "1" }``); a key that may be of several types takes a TOML value when
the text is one, else the text.  A relative path is relative to the working
directory (in the file, to the file).
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Collection, Mapping
from typing import Any

from service.errors import ConfigError

__all__ = ["PREFIX", "EnvText", "environment_value", "name_variable", "overlay"]

PREFIX = "BALANCES_"
_SEPARATOR = "__"
_PART = re.compile(r"[a-z0-9_-]+")


class EnvText(str):
    """A value from the environment, not yet typed; remembers its variable."""

    variable: str

    def __new__(cls, text: str, variable: str) -> EnvText:
        made = super().__new__(cls, text)
        made.variable = variable
        return made


def overlay(
    raw: Mapping[str, Any], environ: Mapping[str, str], reserved: Collection[str] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """``raw`` (not changed) with every ``BALANCES_*__*`` variable placed at its key.

    Also returns where each placed key came from: its dotted key (as the loader
    names keys: ``networks[0].rpc_urls``) -> the variable.  ``reserved``
    variables are read by the loader itself (passwords: no key in the file).
    """
    doc: dict[str, Any] = copy.deepcopy(dict(raw))
    origins: dict[str, str] = {}
    found = []
    for variable in environ:
        if not variable.startswith(PREFIX) or variable in reserved:
            continue
        parts = variable[len(PREFIX) :].split(_SEPARATOR)
        if len(parts) < 2:
            continue  # BALANCES_CONFIG, BALANCES_LOG_LEVEL: not keys
        path = [part.lower() for part in parts]
        if not all(_PART.fullmatch(part) for part in path):
            raise ConfigError(variable, "is not a setting: BALANCES_<SECTION>__<KEY>")
        found.append((path, variable))
    # Indices in number order: NETWORKS__2 adds its entry before NETWORKS__10 needs it.
    found.sort(key=lambda item: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in item[0]])
    for path, variable in found:
        _place(doc, path, EnvText(environ[variable], variable), origins)
    return doc, origins


def _place(doc: dict[str, Any], path: list[str], value: EnvText, origins: dict[str, str]) -> None:
    variable = value.variable
    node: dict[str, Any] | list[Any] = doc
    dotted = ""
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(variable, f"{dotted} is an array of tables: give an index")
            index = int(part)
            if index > len(node):
                raise ConfigError(
                    variable, f"{dotted} has {len(node)} entries: a new one is index {len(node)}"
                )
            if any(not isinstance(item, dict) for item in node):
                raise ConfigError(variable, f"{dotted} is an array of values: set it whole")
            dotted = f"{dotted}[{index}]"
            if last:
                raise ConfigError(variable, f"set the keys of {dotted} one by one")
            if index == len(node):
                node.append({})
                origins.setdefault(dotted, variable)  # an entry the environment made
            node = node[index]
            continue
        dotted = f"{dotted}.{part}" if dotted else part
        if last:
            node[part] = value
            origins[dotted] = variable
            return
        child = node.get(part)
        if child is None:
            child = node[part] = [] if path[depth + 1].isdigit() else {}
            origins.setdefault(dotted, variable)  # a table the environment made
        elif not isinstance(child, dict | list) or isinstance(child, EnvText):
            raise ConfigError(variable, f"{dotted} is not a table")
        node = child


def environment_value(text: EnvText, *, as_text: bool) -> Any:
    """What a variable's text stands for: the text itself for a string or path key,
    else a TOML value when the text is one, else the text (a type check may refuse it)."""
    if as_text:
        return str(text)
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return str(text)


def name_variable(exc: ConfigError, origins: Mapping[str, str]) -> ConfigError:
    """``exc`` naming the variable that set its key (or the entry holding it), if one did."""
    key = exc.key
    for origin in sorted(origins, key=len, reverse=True):
        if key == origin or key.startswith((f"{origin}.", f"{origin}[")):
            variable = origins[origin]
            if key != origin and variable != _variable_for(origin):
                # A key inside an entry the environment made: name its own variable.
                variable, rest = _variable_for(key), ""
            else:
                rest = key[len(origin) :]
            return ConfigError(f"{variable}{rest}", exc.reason)
    return exc


def _variable_for(key: str) -> str:
    """``networks[1].chain_id`` -> ``BALANCES_NETWORKS__1__CHAIN_ID``."""
    parts = re.split(r"\.|\[|\]\.?", key)
    return PREFIX + _SEPARATOR.join(part.upper() for part in parts if part)
