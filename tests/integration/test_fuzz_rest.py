"""Hostile HTTP at every REST route of the real gateway, in front of a healthy server.

Routes come from the route table (``routes_of(API_SERVICES)``), so a new one is
fuzzed with no change here.  Requests go out byte for byte on a plain socket
(so paths, escapes and headers are what hypothesis drew, not what a client
library would make of them): any method, path variables with odd characters
and encodings, query strings, JSON and non-JSON bodies (huge, deep, duplicate
keys), and odd headers (Grpc-Timeout, X-API-Key, Content-Type, metadata).

With healthy chains nothing is a 5xx, except a 504 when the client's own
Grpc-Timeout is too short for the call; nothing logged holds a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import pytest_asyncio
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.services import API_SERVICES
from service.gateway.limits import RestLimits
from service.gateway.routes import Route, routes_of
from service.gateway.serve import RunningGateway, start_gateway
from service.gateway.template import Variable
from tests.support.proto_fuzz import json_values, messages
from tests.support.stack import Stack
from tests.support.tenancy_kit import captured_logs

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LIMITS = RestLimits(max_body_bytes=64 << 10, body_read_timeout_seconds=2.0)
SHORT_DEADLINE_SECONDS = 5.0  # below this, a 504 may be the deadline the client chose
EXAMPLES_PER_ROUTE = 30

ODD_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=24
)  # no CR/LF: a request line or header must stay one line
ODD_PIECES = st.sampled_from(
    ["%", "%zz", "%00", "%2F", "%2f", "..", ".", "%25", "%C0%AF", "%FF", "%E2%82", "+", " ",
     "\x7f", "é", "😀", "*", "**", ":", ":watch", ";a=b", "?", "#", "//", "\\", "%0A"]
)  # fmt: skip


Known = dict[str, list[str]]  # path variable -> IDs that exist


@dataclass(frozen=True)
class Sent:
    method: str
    target: bytes
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    framing: str = "length"  # of the body: "length", "chunked", or "bad-chunks"

    def timeout_header(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "grpc-timeout"), None)

    def raw(self) -> bytes:
        lines = [f"{self.method} ".encode() + self.target + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [f"{k}: ".encode() + v.encode("utf-8", "surrogatepass") for k, v in self.headers]
        lines.append(b"Connection: close")
        payload = b""
        if self.body is not None:
            if self.framing != "length":
                lines.append(b"Transfer-Encoding: chunked")
                size = b"%x" % len(self.body) if self.framing == "chunked" else b"zz"
                payload = (
                    size + b"\r\n" + self.body + b"\r\n0\r\n\r\n" if self.body else b"0\r\n\r\n"
                )
            else:
                lines.append(b"Content-Length: %d" % len(self.body))
                payload = self.body
        return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def exchange(port: int, sent: Sent) -> tuple[int, bytes]:
    """(status, head and the start of the body); a 200 stream is left after its head."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(sent.raw())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, ("the connection closed before a response", sent)
            data += chunk
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
        assert match, (data[:200], sent)
        status = int(match.group(1))
        streaming = b"transfer-encoding: chunked" in data.lower()
        if not (status == 200 and streaming) and sent.method != "HEAD":
            # A server that answered before reading a whole body may reset as it closes.
            with contextlib.suppress(ConnectionResetError):
                while len(data) < 1 << 20 and (chunk := sock.recv(65536)):
                    data += chunk
        return status, data


# --- strategies -------------------------------------------------------------------------


def segment_values(known: list[str]) -> st.SearchStrategy[str]:
    """A path segment as it appears on the wire (already escaped, or not)."""
    return st.one_of(
        st.sampled_from(known),
        ODD_TEXT.map(lambda t: quote(t, safe="")),
        ODD_TEXT.map(lambda t: quote(t, safe="/:@!$&'()*+,;=")),
        st.lists(ODD_PIECES, min_size=1, max_size=4).map("".join),
        st.builds(lambda k, p: k + p, st.sampled_from(known), ODD_PIECES),
        st.integers(200, 3000).map(lambda n: "a" * n),
        st.just(""),
    )


def paths(route: Route, known: Known, *, odd: bool) -> st.SearchStrategy[str]:
    """The route's template with known IDs in its variables; ``odd``: odd values, literals
    and verbs too."""
    parts: list[st.SearchStrategy[str]] = []
    for segment in route.template.segments:
        if isinstance(segment, Variable):
            ids = known.get(segment.name) or sorted({i for v in known.values() for i in v})
            values = segment_values(ids) if odd else st.sampled_from(ids)
            for sub in segment.segments:
                if sub == "**":
                    parts.append(st.lists(values, max_size=3).map("/".join))
                else:
                    parts.append(values if sub == "*" else st.just(sub))
        elif odd:
            parts.append(st.sampled_from([segment] * 4 + [segment.upper(), "", "%2F", ".."]))
        else:
            parts.append(st.just(segment))
    verb = f":{route.template.verb}" if route.template.verb else ""
    verbs = [verb, verb, "", ":" + verb, ":other"] if odd else [verb]
    return st.tuples(*parts, st.sampled_from(verbs)).map(lambda p: "/" + "/".join(p[:-1]) + p[-1])


def query_strings(route: Route) -> st.SearchStrategy[str]:
    descriptor = route.request_class.DESCRIPTOR
    names = [f.name for f in descriptor.fields] + [f.json_name for f in descriptor.fields]
    name = st.one_of(
        st.sampled_from(names or ["x"]),
        st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(names or ["x"]), ODD_TEXT),
        ODD_TEXT,
    )
    value = st.one_of(
        ODD_TEXT, st.integers().map(str), st.sampled_from(["true", "-1", "1e999", "NaN", "%zz"])
    )
    pair = st.builds(
        lambda n, v, raw: f"{n}={v}" if raw else f"{quote(n)}={quote(v)}",
        name,
        value,
        st.sampled_from([False, False, False, True]),  # raw: mostly rejected by aiohttp
    )
    return st.one_of(
        st.just(""),
        st.lists(pair, min_size=1, max_size=5).map(lambda p: "?" + "&".join(p)),
        st.lists(ODD_PIECES, max_size=4).map(lambda p: "?" + "".join(p)),
    )


def bodies(route: Route) -> st.SearchStrategy[bytes | None]:
    valid = messages(route.request_class.DESCRIPTOR, json_safe=True).map(
        lambda m: json.dumps(json_format.MessageToDict(m)).encode()
    )
    field_names = [f.json_name for f in route.request_class.DESCRIPTOR.fields] or ["x"]
    json_bodies = st.one_of(
        valid,
        st.builds(
            lambda d, extra: json.dumps({**d, **extra}).encode(),
            st.dictionaries(st.sampled_from(field_names), json_values(), max_size=4),
            st.dictionaries(st.text(max_size=8), json_values(4), max_size=2),
        ),
        json_values().map(lambda v: json.dumps(v).encode()),
        st.builds(  # duplicate keys
            lambda k, a, b: f'{{"{k}": {json.dumps(a)}, "{k}": {json.dumps(b)}}}'.encode(),
            st.sampled_from(field_names),
            json_values(3),
            json_values(3),
        ),
        st.integers(1, 50_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    )
    return st.one_of(
        st.none(),
        json_bodies,
        st.binary(max_size=200),
        st.sampled_from([b"", b"null", b"{", b'{"url": "\xff"}', b"\xef\xbb\xbf{}", b"1e999999"]),
        st.builds(lambda: b"{}" + b" " * (LIMITS.max_body_bytes + 1)),  # over max_body_bytes
    )


def headers(api_key: str, extra: int = 4) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Mostly the right key, often a Grpc-Timeout (huge ones included), then up to
    ``extra`` odd headers."""
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
    header_values = st.one_of(
        printable,
        printable,
        printable,  # aiohttp itself answers 400 to most of the others
        st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=40),
    )
    timeouts = st.one_of(
        st.builds(lambda n, u: f"{n}{u}", st.integers(0, 99999999), st.sampled_from("HMSmun")),
        st.sampled_from(["99999999H", "99999999M", "99999999S", "721H", "1n", "0S"]),
        st.builds(lambda n, u: f"{n}{u}", st.integers(-5, 10**12), st.sampled_from("HSsX ")),
        header_values,
    )
    one = st.one_of(
        st.tuples(st.just("Grpc-Timeout"), timeouts),
        st.tuples(
            st.just("X-API-Key"),
            st.one_of(st.just(api_key), header_values, st.sampled_from(["", "bk_x_y", "é"])),
        ),
        st.tuples(
            st.just("Content-Type"),
            st.one_of(
                st.sampled_from(
                    [
                        "application/json",
                        "text/plain",
                        "application/x-www-form-urlencoded",
                        "multipart/form-data; boundary=x",
                        "application/json; charset=utf-16",
                        "",
                    ]
                ),
                header_values,
            ),
        ),
        st.tuples(
            st.sampled_from(["X-Request-Id", "X-Forwarded-For", "Authorization"]), header_values
        ),
        st.tuples(
            st.builds(lambda n: "Grpc-Metadata-" + n, st.text("abcxyz-_.:0é", max_size=10)),
            header_values,
        ),
        st.tuples(
            st.sampled_from(["Accept", "Accept-Encoding", "Expect", "Te", "Upgrade", "Range"]),
            header_values,
        ),
    )
    key: st.SearchStrategy[tuple[tuple[str, str], ...]] = st.one_of(
        st.just((("X-API-Key", api_key),)),
        st.just((("X-API-Key", api_key),)),
        st.just(()),
        header_values.map(lambda v: (("X-API-Key", v),)),
    )
    timeout: st.SearchStrategy[tuple[tuple[str, str], ...]] = st.one_of(
        st.just(()), timeouts.map(lambda v: (("Grpc-Timeout", v),))
    )
    return st.builds(
        lambda k, t, rest: (*k, *t, *rest), key, timeout, st.lists(one, max_size=extra)
    )


def requests(route: Route, api_key: str, known: Known) -> st.SearchStrategy[Sent]:
    methods = st.one_of(
        st.just(route.http_method),
        st.just(route.http_method),
        st.just(route.http_method),
        st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]),
        st.sampled_from(["get", "FOO", "M-SEARCH", "PROPFIND"]),
    )
    target = st.builds(
        lambda p, q: (p + q).encode("utf-8", "surrogatepass"),
        paths(route, known, odd=True),
        query_strings(route),
    )
    framings = st.sampled_from(["length", "length", "chunked", "bad-chunks"])
    hostile = st.builds(Sent, methods, target, headers(api_key), bodies(route), framings)
    # Near-valid: the right method, path and key, a valid body, one odd header at most,
    # so that the servicers behind the route see hostile values too.
    valid_target = st.builds(
        lambda p, q: (p + q).encode(),
        paths(route, known, odd=False),
        query_strings(route),
    )
    valid_body = messages(route.request_class.DESCRIPTOR, json_safe=True).map(
        lambda m: json.dumps(json_format.MessageToDict(m)).encode()
    )
    near_valid = st.builds(
        Sent,
        st.just(route.http_method),
        valid_target,
        headers(api_key, extra=1),
        valid_body if route.body else st.none(),
        st.sampled_from(["length", "chunked"]),
    )
    return st.one_of(hostile, near_valid)


# --- the tests --------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def live_gateway(stack: Stack) -> AsyncIterator[RunningGateway]:
    gateway = await start_gateway(stack.target, "127.0.0.1:0", API_SERVICES, LIMITS)
    yield gateway
    await gateway.aclose()


def acceptable(status: int, sent: Sent) -> bool:
    if status < 500:
        return True
    if status != 504:
        return False
    header = sent.timeout_header()
    match = re.fullmatch(r"\s*([+-]?[0-9]+)([HMSmun])\s*", header or "")
    units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    # grpc-gateway's reading: a negative timeout has expired already; 0 is no timeout.
    return (
        match is not None
        and int(match[1]) * units[match[2]] < SHORT_DEADLINE_SECONDS
        and (int(match[1]) != 0)
    )


def fuzz_every_route(port: int, api_key: str, known: Known) -> dict[int, int]:
    """Hypothesis over each route, then random paths; a worker thread's blocking sockets."""
    statuses: dict[int, int] = {}

    def check(sent: Sent) -> None:
        status, response = exchange(port, sent)
        statuses[status] = statuses.get(status, 0) + 1
        assert acceptable(status, sent), (status, response[:600], sent)
        assert b"Traceback" not in response, (response[:2000], sent)

    def fuzz(strategy: st.SearchStrategy[Sent], examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(sent=strategy)
        def never_5xx(sent: Sent) -> None:
            check(sent)

        never_5xx()

    for route in routes_of(API_SERVICES):
        fuzz(requests(route, api_key, known), EXAMPLES_PER_ROUTE)
    anywhere = st.builds(
        Sent,
        st.sampled_from(["GET", "POST", "HEAD", "PATCH"]),
        st.lists(
            segment_values(["v1", "openapi.json", "wallets", "customers", "webhooks"]), max_size=5
        ).map(lambda s: ("/" + "/".join(s)).encode()),
        headers(api_key),
        st.none(),
    )
    fuzz(anywhere, EXAMPLES_PER_ROUTE)
    return statuses


async def test_hostile_requests_at_every_route_are_never_5xx(
    live_gateway: RunningGateway, stack: Stack
) -> None:
    known = {
        "wallet_id": sorted({w.wallet_id for w in stack.world.wallets}),
        "customer_id": sorted({w.customer_id for w in stack.world.wallets}),
    }
    with captured_logs() as logs:
        statuses = await asyncio.to_thread(
            fuzz_every_route, live_gateway.port, stack.api_key, known
        )
    assert sum(statuses.values()) > 300, statuses
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses  # both sides reached
    text = logs.text()
    assert "Traceback" not in text
    assert "failed unexpectedly" not in text


@pytest.mark.parametrize("value", ["99999999H", "99999999M", "99999999S", "721H"])
async def test_a_huge_grpc_timeout_is_clamped_not_an_instant_504(
    live_gateway: RunningGateway, stack: Stack, value: str
) -> None:
    wallet = stack.world.wallets[0].wallet_id
    sent = Sent(
        "GET",
        f"/v1/wallets/{wallet}/balance".encode(),
        (("X-API-Key", stack.api_key), ("Grpc-Timeout", value)),
        None,
    )
    status, response = await asyncio.to_thread(exchange, live_gateway.port, sent)
    assert status == 200, response[:600]


async def test_a_zero_grpc_timeout_is_the_default(
    live_gateway: RunningGateway, stack: Stack
) -> None:
    """grpc-gateway: a zero Grpc-Timeout sets no deadline of the client's (changed: was 400)."""
    wallet = stack.world.wallets[0].wallet_id
    sent = Sent(
        "GET",
        f"/v1/wallets/{wallet}/balance".encode(),
        (("X-API-Key", stack.api_key), ("Grpc-Timeout", "0S")),
        None,
    )
    status, response = await asyncio.to_thread(exchange, live_gateway.port, sent)
    assert status == 200, response[:600]
