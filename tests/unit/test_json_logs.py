"""JSON log lines: every field redacted (``extra=`` and tracebacks included), the request's
fields on lines logged inside it, and access lines collapsed unless a tenant's call succeeded."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import setup_logging
from service.request_context import RequestScope, begin_call, current_request, end_call
from tests.support.cli import _own_logging

SECRET_URL = "https://rpc.example/v3/SECRET-PROVIDER-KEY"


class _Holder:
    def __str__(self) -> str:
        return f"holder of {SECRET_URL}"


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines()]


def test_every_field_of_a_json_line_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    with _own_logging():
        setup_logging([SECRET_URL], level="INFO", log_format="json")
        log = logging.getLogger("tests.json")
        try:
            raise RuntimeError(f"upstream {SECRET_URL} failed")
        except RuntimeError:
            log.exception(
                "read via %s",
                SECRET_URL,
                extra={"upstream": SECRET_URL, "holder": _Holder(), "attempt": 2},
                stack_info=True,
            )
    err = capsys.readouterr().err
    assert "SECRET-PROVIDER-KEY" not in err
    [line] = _lines(err)
    assert line["message"] == "read via https://rpc.example/***"
    assert line["upstream"] == "https://rpc.example/***"
    assert line["holder"] == "holder of https://rpc.example/***"
    assert line["attempt"] == 2
    assert "RuntimeError" in str(line["exc_info"]) and "stack_info" in line
    assert line["level"] == "ERROR" and line["logger"] == "tests.json"


def test_a_line_logged_inside_a_request_carries_it(capsys: pytest.CaptureFixture[str]) -> None:
    with _own_logging():
        setup_logging(level="INFO", log_format="json", access_log=True)
        scope = begin_call("req-1", "/pkg.Service/Method", "grpc")
        scope.tenant = "acme"
        logging.getLogger("tests.json").info("working")
        end_call(scope, "OK")
        assert current_request.get() is None
        logging.getLogger("tests.json").info("after")
    working, access, after = _lines(capsys.readouterr().err)
    assert (working["request_id"], working["tenant"], working["method"]) == (
        "req-1",
        "acme",
        "/pkg.Service/Method",
    )
    assert access["status"] == "OK" and access["via"] == "grpc" and access["request_id"] == "req-1"
    assert "_collapse_exempt" not in access and "_collapse_kind" not in access
    assert "request_id" not in after


def test_text_lines_are_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    with _own_logging():
        setup_logging(level="INFO")
        logging.getLogger("tests.text").info("plain %s", "line")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO tests.text: plain line") and not line.startswith("{")


def test_access_lines_are_off_unless_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    with _own_logging():
        setup_logging(level="INFO", log_format="json")
        end_call(begin_call("req-2", "/pkg.Service/Method", "grpc"), "OK")
    assert capsys.readouterr().err == ""


def test_failed_and_anonymous_calls_collapse_successful_tenant_calls_do_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def call(request_id: str, tenant: str | None, code: str) -> None:
        scope = begin_call(request_id, "/pkg.Service/Method", "grpc")
        scope.tenant = tenant
        end_call(scope, code)

    with _own_logging():
        setup_logging(level="INFO", log_format="json", access_log=True)
        for i in range(20):
            call(f"ok-{i}", "acme", "OK")
            call(f"bad-{i}", None, "UNAUTHENTICATED")
            call(f"gone-{i}", "acme", "NOT_FOUND")
    lines = _lines(capsys.readouterr().err)
    ids = [line.get("request_id") for line in lines]
    assert [i for i in ids if str(i).startswith("ok-")] == [f"ok-{i}" for i in range(20)]
    assert len([i for i in ids if str(i).startswith("bad-")]) == 3  # then held back, counted
    assert len([i for i in ids if str(i).startswith("gone-")]) == 3
    held = [line["message"] for line in lines if "request_id" not in line]
    assert len(held) == 2 and all("17 more lines like" in m for m in held), held


def test_a_rest_request_in_process_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from service.request_context import log_rest_request

    with _own_logging():
        setup_logging(level="INFO", log_format="json", access_log=True)
        rest = RequestScope("req-3", "rest", http_method="GET", from_shim=True)
        token = current_request.set(rest)
        rest.route = "/v1/things/{id}"
        inner = begin_call("req-3", "/pkg.Service/Get", "rest")  # the interceptors, in process
        assert inner is rest
        inner.tenant = "acme"
        end_call(inner, "NOT_FOUND")
        current_request.reset(token)
        log_rest_request(rest, 404)
    [line] = _lines(capsys.readouterr().err)
    assert line["status"] == "NOT_FOUND" and line["http_status"] == 404
    assert line["route"] == "/v1/things/{id}" and line["method"] == "/pkg.Service/Get"
