"""The snapshot codec of the shared (Redis) cache: exact round trips, and junk read as junk."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import FeedReading, Snapshot
from service.snapshot_codec import decode_snapshot, encode_snapshot

UINT256 = st.integers(min_value=0, max_value=2**256 - 1)
INT256 = st.integers(min_value=-(2**255), max_value=2**255 - 1)
NAMES = st.text(min_size=1, max_size=12)
SNAPSHOTS = st.builds(
    Snapshot,
    network=NAMES,
    block_number=st.integers(min_value=0, max_value=2**63),
    block_timestamp=st.integers(min_value=0, max_value=2**40),
    balances=st.dictionaries(NAMES, st.dictionaries(NAMES, UINT256, max_size=4), max_size=4),
    feeds=st.dictionaries(
        NAMES,
        st.builds(
            FeedReading,
            answer=INT256,
            decimals=st.integers(min_value=0, max_value=36),
            updated_at=st.integers(min_value=0, max_value=2**40),
        ),
        max_size=3,
    ),
)


@given(SNAPSHOTS)
def test_every_snapshot_comes_back_equal_to_the_last_unit(snapshot: Snapshot) -> None:
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


def test_amounts_are_written_as_decimal_strings_never_numbers() -> None:
    raw = 2**256 - 1  # far beyond a double: a float would come back different
    snapshot = Snapshot(
        "polygon", 7, 1_700_000_000, {"0xA": {"USDC": raw}}, {"ETH": FeedReading(-5, 8, 9)}
    )
    doc = json.loads(encode_snapshot(snapshot))
    assert doc["a"]["0xA"]["USDC"] == str(raw)
    assert doc["f"]["ETH"] == ["-5", 8, 9]
    assert decode_snapshot(encode_snapshot(snapshot)).balances["0xA"]["USDC"] == raw


GOOD = json.loads(encode_snapshot(Snapshot("p", 1, 2, {"0xA": {"USDC": 5}}, {})))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        json.dumps({**GOOD, "extra": 1}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "t"}).encode(),
        json.dumps({**GOOD, "b": "1"}).encode(),
        json.dumps({**GOOD, "b": True}).encode(),
        json.dumps({**GOOD, "b": 1.5}).encode(),
        json.dumps({**GOOD, "a": {"0xA": {"USDC": 5}}}).encode(),  # a number, not a string
        json.dumps({**GOOD, "a": {"0xA": {"USDC": "5.0"}}}).encode(),
        json.dumps({**GOOD, "a": {"0xA": {"USDC": "1e3"}}}).encode(),
        json.dumps({**GOOD, "a": {"0xA": {"USDC": " 5"}}}).encode(),
        json.dumps({**GOOD, "a": {"0xA": {"USDC": "\u0665"}}}).encode(),  # a non-ASCII digit
        json.dumps({**GOOD, "a": {"0xA": {"USDC": "9" * 101}}}).encode(),
        json.dumps({**GOOD, "a": ["0xA"]}).encode(),
        json.dumps({**GOOD, "f": {"ETH": ["1", 8]}}).encode(),
        json.dumps({**GOOD, "f": {"ETH": [1, 8, 9]}}).encode(),
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a snapshot"):
        decode_snapshot(data)
