"""Secrets (RPC URLs with provider keys) never reach a log line or a message."""

from __future__ import annotations

import io
import logging

import pytest

from service.redact import RedactingFilter, Redactor, redact_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "https://user:key@host.example:8545/v2/KEY?apikey=K#frag",
            "https://host.example:8545/***",
        ),
        ("https://mainnet.infura.io/v3/0123456789abcdef", "https://mainnet.infura.io/***"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545/***"),
        ("wss://:secret@node.example/ws?token=T", "wss://node.example/***"),
    ],
)
def test_redact_url_keeps_only_scheme_host_and_port(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_redactor_replaces_the_longest_secret_first() -> None:
    short = "https://rpc.example/v1"
    long = "https://rpc.example/v1/LONG-KEY"
    text = f"failed: {long} and {short}."
    for urls in ([short, long], [long, short]):
        assert Redactor(urls).redact(text) == (
            "failed: https://rpc.example/*** and https://rpc.example/***."
        )


def test_redactor_also_redacts_urls_it_was_not_given() -> None:
    # e.g. aiohttp lowercased the host of a configured URL
    text = "ClientResponseError: 503, url='http://rpc.example:8545/v3/OTHER-KEY?k=1'; retry."
    assert Redactor(["https://RPC.example/v3/OTHER-KEY"]).redact(text) == (
        "ClientResponseError: 503, url='http://rpc.example:8545/***'; retry."
    )


def test_redactor_leaves_other_text_alone() -> None:
    redactor = Redactor(["https://rpc.example/v3/KEY", ""])
    assert redactor.redact("network polygon: timed out") == "network polygon: timed out"


def test_filter_redacts_message_arguments_and_traceback_on_a_real_handler() -> None:
    secret = "https://user:pw@rpc.example/v3/KEY?x=1"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(Redactor([secret])))
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("calling %s failed", secret)
        try:
            raise RuntimeError(f"boom {secret}")
        except RuntimeError:
            logger.exception("unexpected")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out = stream.getvalue()
    assert "WARNING calling https://rpc.example/*** failed" in out
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: boom https://rpc.example/***" in out
    assert "KEY" not in out and "user:pw" not in out and "x=1" not in out


class SecretHolder:
    """An object whose text holds a secret, as an exception or a client object might."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __str__(self) -> str:
        return f"<client for {self.url}>"


def test_filter_redacts_extra_fields_stack_and_exception_arguments() -> None:
    secret = "https://rpc.example/v3/EXTRA-KEY"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    # A formatter that writes every field, as a JSON formatter would.
    handler.setFormatter(logging.Formatter("%(message)s | %(target)s | %(client)s | %(attempt)d"))
    handler.addFilter(RedactingFilter(Redactor([secret])))
    logger = logging.getLogger("tests.redaction.extra")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        error = ValueError("bad answer", secret)  # an exception argument, not its message
        logger.warning(
            "read failed: %s",
            error,
            extra={"target": secret, "client": SecretHolder(secret), "attempt": 3},
            stack_info=True,
        )
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out = stream.getvalue()
    assert "EXTRA-KEY" not in out
    assert "https://rpc.example/***" in out
    assert "<client for https://rpc.example/***> | 3" in out  # numbers keep their type
