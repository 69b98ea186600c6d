"""REST routes read from the ``google.api.http`` options of service descriptors.

No route is written by hand: any RPC annotated in a proto the process has
loaded gets its route(s), ``additional_bindings`` included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from service.errors import TemplateError
from service.gateway.template import PathTemplate

__all__ = ["Route", "RouteMatch", "RouteTable", "routes_of"]

_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str  # upper case: GET, POST, ...
    template: PathTemplate
    body: str  # "" (no body), "*" (the whole request), or a top-level field name
    response_body: str  # "" (the whole response) or a top-level field name
    method: MethodDescriptor

    # Looked up on every request: worked out once per route.
    @cached_property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @cached_property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @cached_property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    @cached_property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @cached_property
    def reads_query(self) -> bool:
        """grpc-gateway's HasQueryParam: a field neither the body nor a path variable fills."""
        if self.body == "*":
            return False
        fields = set(self.method.input_type.fields_by_name) - {self.body}
        return bool(fields - {variable.name for variable in self.template.variables})

    @cached_property
    def specificity(self) -> int:
        """More literal segments, then a verb, win when several templates match a path."""
        literals = sum(1 for segment in self.template.segments if isinstance(segment, str))
        return literals * 2 + (self.template.verb is not None)


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    variables: dict[str, str]  # field path -> decoded value


@dataclass(frozen=True)
class MethodNotAllowed:
    """The path exists, but not for this HTTP method."""

    allowed: tuple[str, ...]  # sorted, never empty
    get: RouteMatch | None = None  # the GET route's match: a form POST falls back to it


def routes_of(services: Iterable[ServiceDescriptor]) -> list[Route]:
    """Every binding of every annotated method; unannotated methods get no route."""
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            options: Any = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            for binding in [rule, *rule.additional_bindings]:
                routes.append(_route(binding, method))
    return routes


def _route(rule: http_pb2.HttpRule, method: MethodDescriptor) -> Route:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise TemplateError(f"{method.full_name}: http rule without a method")
    if pattern == "custom":
        verb, path = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, path = pattern.upper(), getattr(rule, pattern)
    return Route(verb, PathTemplate.parse(path), rule.body, rule.response_body, method)


class RouteTable:
    """Finds the route for a method and path; tells 404 (no path) from 405 (wrong method).

    As grpc-gateway's ServeMux: the request's own method's routes are tried first,
    and only when none matches do other methods' routes count (405).  So a GET of
    "/customers/c/wallets/import" is GetWallet of a wallet called "import", while a
    POST there is ImportWallet.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        # Routes with a ":verb" are tried first: "/x/{id}" would otherwise take
        # "/x/abc:watch" as an id of "abc:watch".
        self._match_order = sorted(self.routes, key=lambda r: r.template.verb is None)

    def find(self, http_method: str, path: str) -> RouteMatch | MethodNotAllowed | None:
        """The match; the methods allowed when the path exists for others; None: no such path.

        ``path`` is percent-decoded.  When several templates of one method match a
        path, the most specific (most literal segments, then a verb) wins.
        """
        matches: list[tuple[Route, dict[str, str]]] = []
        for route in self._match_order:
            variables = route.template.match(path)
            if variables is not None:
                matches.append((route, variables))
        if not matches:
            return None
        own = [(route, v) for route, v in matches if route.http_method == http_method]
        if own:
            best = max(route.specificity for route, _ in own)
            route, variables = next((r, v) for r, v in own if r.specificity == best)
            return RouteMatch(route, variables)
        gets = [(route, v) for route, v in matches if route.http_method == "GET"]
        get = None
        if gets:
            best = max(route.specificity for route, _ in gets)
            get = RouteMatch(*next((r, v) for r, v in gets if r.specificity == best))
        # Allow: the methods of the path's most specific template, as /openapi.json lists
        # them (a GET of .../wallets/import is served, by .../wallets/{wallet_id}, but
        # that path is documented as the import route's).
        best = max(route.specificity for route, _ in matches)
        allowed = {route.http_method for route, _ in matches if route.specificity == best}
        return MethodNotAllowed(tuple(sorted(allowed)), get)
