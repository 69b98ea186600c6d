"""google.api.http path templates: parse once, match request paths.

Grammar (from google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

``{name}`` is ``{name=*}``: one path segment.  Matching works on the path
already percent-decoded, as grpc-gateway v2's default (``UnescapingModeLegacy``)
does: an encoded slash (%2F) separates segments like "/", and an encoded
literal or verb (``wall%65ts``, ``%3Awatch``) matches its decoded self.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from service.errors import TemplateError

__all__ = ["PathTemplate", "Variable"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Variable:
    """A captured field: ``field_path`` like ("wallet_id",) or ("parent", "name")."""

    field_path: tuple[str, ...]
    segments: tuple[str, ...]  # the sub-pattern: literals, "*" or "**"

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


# A parsed segment is a literal string, "*", "**", or a Variable.
Segment = str | Variable


@dataclass(frozen=True)
class PathTemplate:
    source: str
    segments: tuple[Segment, ...]
    verb: str | None

    @classmethod
    def parse(cls, source: str) -> PathTemplate:
        if not source.startswith("/"):
            raise TemplateError(f"{source!r}: a path template starts with '/'")
        body, verb = source[1:], None
        # A verb is a ':' after the last '/', outside any {...}.
        last_slash = body.rfind("/")
        tail = body[last_slash + 1 :]
        if ":" in tail and "}" not in tail[tail.rfind(":") :]:
            body, _, verb = body.rpartition(":")
            if not verb:
                raise TemplateError(f"{source!r}: empty verb")
        segments = tuple(_parse_segments(body, source))
        return cls(source, segments, verb)

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(s for s in self.segments if isinstance(s, Variable))

    def match(self, path: str) -> dict[str, str] | None:
        """Field path -> value when the (percent-decoded) ``path`` matches, else None."""
        if not path.startswith("/"):
            return None
        body = path[1:]
        if self.verb is not None:
            suffix = ":" + self.verb
            if not body.endswith(suffix):
                return None
            body = body[: -len(suffix)]
        parts = body.split("/")
        flat = self._flat
        captured: dict[Variable, list[str]] = {}
        if self._has_double_wildcard:
            if not _match(flat, parts, captured):
                return None
        else:
            # The common case, every request: one part per pattern element, no search.
            if len(parts) != len(flat):
                return None
            for (kind, var), part in zip(flat, parts, strict=True):
                if kind == "*":
                    if var is None and not part:
                        return None
                elif part != kind:
                    return None
                if var is not None:
                    captured.setdefault(var, []).append(part)
        return {var.name: "/".join(values) for var, values in captured.items()}

    @cached_property
    def _flat(self) -> list[tuple[str, Variable | None]]:
        """The segments as one element per path part: (literal, "*" or "**"; its variable)."""
        flat: list[tuple[str, Variable | None]] = []
        for segment in self.segments:
            if isinstance(segment, Variable):
                flat.extend((p, segment) for p in segment.segments)
            else:
                flat.append((segment, None))
        return flat

    @cached_property
    def _has_double_wildcard(self) -> bool:
        return any(kind == "**" for kind, _ in self._flat)


def _parse_segments(text: str, source: str) -> list[Segment]:
    segments: list[Segment] = []
    i = 0
    while i <= len(text):
        if text.startswith("{", i):
            end = text.find("}", i)
            if end < 0:
                raise TemplateError(f"{source!r}: unclosed '{{'")
            segments.append(_parse_variable(text[i + 1 : end], source))
            i = end + 1
        else:
            end = text.find("/", i)
            end = len(text) if end < 0 else end
            literal = text[i:end]
            if not literal or "{" in literal or "}" in literal:
                raise TemplateError(f"{source!r}: bad segment {literal!r}")
            segments.append(literal)
            i = end
        if i < len(text) and text[i] != "/":
            raise TemplateError(f"{source!r}: expected '/' at {i + 1}")
        i += 1
    if "**" in [s for s in segments if isinstance(s, str)][:-1]:
        raise TemplateError(f"{source!r}: '**' must be the last segment")
    return segments


def _parse_variable(text: str, source: str) -> Variable:
    field, _, pattern = text.partition("=")
    path = tuple(field.split("."))
    if not all(_IDENT.fullmatch(p) for p in path):
        raise TemplateError(f"{source!r}: bad field path {field!r}")
    sub = tuple(pattern.split("/")) if pattern else ("*",)
    if any(not s or "{" in s for s in sub):
        raise TemplateError(f"{source!r}: bad variable pattern {pattern!r}")
    return Variable(path, sub)


def _match(
    pattern: list[tuple[str, Variable | None]],
    parts: list[str],
    captured: dict[Variable, list[str]],
) -> bool:
    if not pattern:
        return not parts
    (kind, var), rest = pattern[0], pattern[1:]
    if kind == "**":
        # Greedy over the longest tail that still lets the rest match (rest is literals only).
        for take in range(len(parts) - len(rest), -1, -1):
            if take < 0:
                break
            trial = dict(captured)
            if var is not None:
                trial[var] = [*captured.get(var, []), *parts[:take]]
            if _match(rest, parts[take:], trial):
                captured.clear()
                captured.update(trial)
                return True
        return False
    if not parts:
        return False
    part = parts[0]
    if kind == "*":
        if var is None and not part:
            return False
    elif part != kind:
        return False
    if var is not None:
        captured[var] = [*captured.get(var, []), part]
    return _match(rest, parts[1:], captured)
