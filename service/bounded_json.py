"""``json.loads`` for untrusted text, refusing deep nesting before the C decoder sees it.

Any library that raises Python's recursion limit (py_ecc, imported by web3,
sets 100000) makes the C JSON decoder stop failing with a RecursionError: text
nested a few hundred thousand levels deep then overflows the C stack and kills
the process.  The service no longer imports web3, but the guard costs little.  Every JSON
that comes from outside (REST bodies, import files, page tokens) goes through here.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import TooDeep

__all__ = ["MAX_DEPTH", "loads_bounded"]

MAX_DEPTH = 32


def loads_bounded(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)``, or ``TooDeep`` when arrays/objects nest beyond ``max_depth``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    # Counting in C first: most texts have too few brackets to nest too deep at all.
    if text.count("[") + text.count("{") > max_depth and _depth(text) > max_depth:
        raise TooDeep(max_depth)
    return json.loads(text)


def _depth(text: str) -> int:
    """The deepest nesting of arrays/objects in ``text``, ignoring string contents."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
