"""The hand-written Multicall3 codec held to ``eth_abi``: the same calldata, the same
results, and the same refusals on corrupted answers; the batch splitter; and the
reader turning a malformed answer into a provider fault against a fake node."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from eth_abi.abi import decode, encode
from eth_utils.address import to_checksum_address
from hypothesis import example, given
from hypothesis import strategies as st

from service.chain import multicall, reader
from service.chain.multicall import (
    AGGREGATE3,
    BALANCE_OF,
    DECIMALS,
    GET_BLOCK_NUMBER,
    GET_CURRENT_BLOCK_TIMESTAMP,
    GET_ETH_BALANCE,
    LATEST_ROUND_DATA,
    Call,
    CallResult,
    MalformedAnswer,
    address_arg,
    call_tuple,
    calldata_size,
    decode_aggregate3,
    encode_aggregate3,
    encode_tuples,
    holder_call_prefix,
    holder_call_tuple,
    holder_raw,
    int_word,
    split_calls,
    uint_word,
)
from service.chain.providers import Endpoint, ProviderPolicy, ProviderPool
from service.chain.reader import ChainReader
from service.errors import ChainUnavailable
from service.settings import NetworkSettings, PriceSettings, TokenSettings

on_loop = pytest.mark.asyncio(loop_scope="session")

addresses = st.binary(min_size=20, max_size=20).map(lambda raw: to_checksum_address(raw))
calls = st.lists(st.builds(Call, addresses, st.binary(max_size=100)), max_size=12)
results = st.lists(st.tuples(st.booleans(), st.binary(max_size=100)), max_size=12)


def eth_abi_results(data: bytes) -> list[CallResult]:
    (decoded,) = decode(["(bool,bytes)[]"], data)
    return [CallResult(ok, bytes(out)) for ok, out in decoded]


def same_verdict(data: bytes) -> None:
    """Our decoder and eth_abi (strict) agree on ``data``: both refuse it (ours with
    ``MalformedAnswer``), or both accept it with the same results."""
    try:
        expected: list[CallResult] | None = eth_abi_results(data)
    except Exception:  # eth_abi raises several unrelated types on bad input
        expected = None
    if expected is None:
        with pytest.raises(MalformedAnswer):
            decode_aggregate3(data)
    else:
        assert decode_aggregate3(data) == expected


# --- encoding ---------------------------------------------------------------------------


@given(calls)
def test_calldata_is_eth_abis_byte_for_byte(batch: list[Call]) -> None:
    expected = AGGREGATE3 + encode(
        ["(address,bool,bytes)[]"], [[(c.target, True, c.data) for c in batch]]
    )
    assert encode_aggregate3(batch) == expected
    assert calldata_size(batch) == len(expected)


def test_lower_case_targets_encode_like_checksummed_ones() -> None:
    target = "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359"
    data = BALANCE_OF + address_arg(target.lower())
    assert encode_aggregate3([Call(target.lower(), data)]) == encode_aggregate3(
        [Call(target, data)]
    )


@given(addresses)
def test_an_address_argument_is_its_abi_word(address: str) -> None:
    assert address_arg(address) == encode(["address"], [address])


@pytest.mark.parametrize(
    "address",
    ["", "0x", "0x" + "ab" * 19, "0x" + "ab" * 21, "ab" * 21, "0x" + "zz" * 20, "0x" + " ab" * 20],
)
def test_a_malformed_address_is_refused_not_encoded(address: str) -> None:
    with pytest.raises(ValueError):
        address_arg(address)
    with pytest.raises(ValueError):
        encode_aggregate3([Call(address, b"")])


@given(addresses, addresses, st.sampled_from([BALANCE_OF, GET_ETH_BALANCE]))
def test_a_holder_call_from_its_template_is_the_call_encoded(
    target: str, holder: str, selector: bytes
) -> None:
    """The reader's per-holder calls: a prefix per (target, selector) and the holder's bytes."""
    call = Call(target, selector + address_arg(holder))
    made = holder_call_tuple(holder_call_prefix(target, selector), holder_raw(holder))
    assert made == call_tuple(call)
    assert encode_tuples([made, call_tuple(call)]) == encode_aggregate3([call, call])


# --- decoding ---------------------------------------------------------------------------

# Every result one word, as balance reads answer: the decoder's regular fast path.
word_results = st.lists(
    st.tuples(st.booleans(), st.binary(min_size=32, max_size=32)), min_size=1, max_size=40
)


@given(word_results)
def test_one_word_results_take_the_fast_path_and_are_eth_abis(
    answers: list[tuple[bool, bytes]],
) -> None:
    data = encode(["(bool,bytes)[]"], [answers])
    n = len(answers)
    assert len(multicall._regular_run(data, 64, n, 64 + 32 * n)) == n  # the path under test
    assert decode_aggregate3(data) == eth_abi_results(data)
    assert decode_aggregate3(data + bytes(32)) == eth_abi_results(data)  # trailing bytes


@given(word_results, st.data())
def test_one_word_results_with_a_word_overwritten_are_refused_or_read_as_eth_abi(
    answers: list[tuple[bool, bytes]], draw: st.DataObject
) -> None:
    data = bytearray(encode(["(bool,bytes)[]"], [answers]))
    for _ in range(draw.draw(st.integers(1, 2))):
        at = draw.draw(st.integers(0, len(data) // 32 - 1)) * 32
        data[at : at + 32] = draw.draw(WORD_VALUES_SMALL).to_bytes(32, "big")
    same_verdict(bytes(data))


@given(word_results, st.data())
def test_one_word_results_with_a_flipped_byte_or_cut_are_refused_or_read_as_eth_abi(
    answers: list[tuple[bool, bytes]], draw: st.DataObject
) -> None:
    data = bytearray(encode(["(bool,bytes)[]"], [answers]))
    at = draw.draw(st.integers(0, len(data) - 1))
    data[at] ^= draw.draw(st.integers(1, 255))
    same_verdict(bytes(data))
    same_verdict(bytes(data[: draw.draw(st.integers(0, len(data) - 1))]))


@given(word_results, st.binary(max_size=70), st.data())
def test_one_irregular_result_among_one_word_results_is_read_by_the_general_path(
    answers: list[tuple[bool, bytes]], odd: bytes, draw: st.DataObject
) -> None:
    at = draw.draw(st.integers(0, len(answers)))
    mixed = [*answers[:at], (draw.draw(st.booleans()), odd), *answers[at:]]
    data = encode(["(bool,bytes)[]"], [mixed])
    n = len(mixed)
    assert len(multicall._regular_run(data, 64, n, 64 + 32 * n)) >= at  # the run before it
    assert decode_aggregate3(data) == eth_abi_results(data)


@given(results)
def test_results_are_eth_abis(answers: list[tuple[bool, bytes]]) -> None:
    data = encode(["(bool,bytes)[]"], [answers])
    assert decode_aggregate3(data) == [CallResult(ok, out) for ok, out in answers]
    assert decode_aggregate3(data) == eth_abi_results(data)


WORD_VALUES_SMALL = st.one_of(
    st.integers(0, 4),  # bools, and a success flag turned into 2, 3, 4
    st.sampled_from([0x20, 0x40, 0x60, 0x80, 2**256 - 1]),  # offsets and lengths near the real
    st.integers(0, 2**256 - 1),
)
WORD_VALUES = st.one_of(
    st.integers(0, 600),  # offsets and lengths near the real ones
    st.sampled_from([2**256 - 1, 2**255, 2**64, 2**32 - 1]),  # huge ones
    st.integers(0, 2**256 - 1),
)


@given(results.filter(bool), st.data())
def test_a_word_overwritten_anywhere_is_refused_or_read_as_eth_abi_reads_it(
    answers: list[tuple[bool, bytes]], draw: st.DataObject
) -> None:
    data = bytearray(encode(["(bool,bytes)[]"], [answers]))
    for _ in range(draw.draw(st.integers(1, 3))):
        at = draw.draw(st.integers(0, len(data) // 32 - 1)) * 32
        data[at : at + 32] = draw.draw(WORD_VALUES).to_bytes(32, "big")
    same_verdict(bytes(data))


@given(results.filter(bool), st.data())
def test_truncated_answers_are_refused_as_eth_abi_refuses_them(
    answers: list[tuple[bool, bytes]], draw: st.DataObject
) -> None:
    data = encode(["(bool,bytes)[]"], [answers])
    cut = draw.draw(st.integers(0, len(data) - 1))
    same_verdict(data[:cut])


@given(results.filter(bool), st.data())
def test_a_flipped_byte_is_refused_or_read_as_eth_abi_reads_it(
    answers: list[tuple[bool, bytes]], draw: st.DataObject
) -> None:
    data = bytearray(encode(["(bool,bytes)[]"], [answers]))
    at = draw.draw(st.integers(0, len(data) - 1))
    data[at] ^= draw.draw(st.integers(1, 255))
    same_verdict(bytes(data))


@given(st.binary(max_size=400))
@example(b"")
@example(bytes(31))
@example((32).to_bytes(32, "big") + bytes(32))  # no results
@example((32).to_bytes(32, "big") + (2**256 - 1).to_bytes(32, "big"))  # 2**256-1 results
@example((32).to_bytes(32, "big") + (1).to_bytes(32, "big") + (0).to_bytes(32, "big"))
def test_any_bytes_are_refused_or_read_as_eth_abi_reads_them(data: bytes) -> None:
    same_verdict(data)


def test_trailing_bytes_are_ignored_as_eth_abi_ignores_them() -> None:
    """Decided: bytes after what the offsets reach are not an error (eth_abi and
    Solidity's abi.decode ignore them too); a result missing is, by the reader's count."""
    data = encode(["(bool,bytes)[]"], [[(True, (7).to_bytes(32, "big"))]])
    for garbage in (b"\x01", bytes(32), b"\xff" * 100):
        same_verdict(data + garbage)
        assert decode_aggregate3(data + garbage) == [CallResult(True, (7).to_bytes(32, "big"))]


def answer(*items: tuple[bool, bytes]) -> bytearray:
    return bytearray(encode(["(bool,bytes)[]"], [list(items)]))


def put(data: bytearray, at: int, value: int) -> bytes:
    data[at : at + 32] = value.to_bytes(32, "big")
    return bytes(data)


ONE = (True, (5).to_bytes(32, "big"))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(put(answer(ONE), 0, 0), "array offset", id="array-offset-into-itself"),
        pytest.param(put(answer(ONE), 0, 2**256 - 1), "array offset", id="array-offset-huge"),
        pytest.param(put(answer(ONE), 32, 100), "more results", id="count-past-the-end"),
        pytest.param(put(answer(ONE), 32, 6), "more results", id="count-one-word-past-the-end"),
        pytest.param(put(answer(ONE), 64, 0), "result offset", id="tuple-offset-into-heads"),
        pytest.param(put(answer(ONE), 64, 10**6), "result offset", id="tuple-offset-past-end"),
        pytest.param(put(answer(ONE), 96, 2), "bool", id="success-is-two"),
        pytest.param(put(answer(ONE), 128, 32), "returnData offset", id="data-offset-in-tuple"),
        pytest.param(put(answer(ONE), 160, 33), "past the end", id="length-one-too-long"),
        pytest.param(put(answer(ONE), 160, 2**256 - 1), "past the end", id="length-huge"),
        pytest.param(
            put(answer((True, b"\x01")), 192, (1 << 248) | 1), "padding", id="dirty-padding"
        ),
        pytest.param(bytes(answer(ONE))[:-1], "past the end", id="one-byte-short"),
        pytest.param(bytes(answer((True, b"\x01")))[:-31], "past the end", id="unpadded"),
    ],
)
def test_each_corruption_is_refused_by_both_and_says_what(data: bytes, why: str) -> None:
    with pytest.raises(MalformedAnswer, match=why):
        decode_aggregate3(data)
    with pytest.raises(Exception):  # noqa: B017 - eth_abi's types vary
        eth_abi_results(data)


# --- words ------------------------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32), st.sampled_from([8, 80, 256]))
def test_uint_words_are_eth_abis_or_refused_as_it_refuses(word: bytes, bits: int) -> None:
    try:
        expected: int | None = decode([f"uint{bits}"], word)[0]
    except Exception:
        expected = None
    if expected is None:
        with pytest.raises(MalformedAnswer):
            uint_word(word, 0, bits)
    else:
        assert uint_word(bytes(32) + word, 1, bits) == expected


@given(st.binary(min_size=32, max_size=32))
def test_int256_words_are_eth_abis(word: bytes) -> None:
    assert int_word(word, 0) == decode(["int256"], word)[0]


def test_a_short_answer_has_no_word() -> None:
    with pytest.raises(MalformedAnswer):
        uint_word(bytes(63), 1)
    with pytest.raises(MalformedAnswer):
        int_word(bytes(31), 0)


# --- splitting ----------------------------------------------------------------------------

TOKEN = "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359"
BALANCE = Call(TOKEN, BALANCE_OF + bytes(32))  # 224 bytes of calldata inside aggregate3
EMPTY = 4 + 64  # selector, offset, length: an aggregate3 with no calls


def test_a_batch_under_both_limits_is_one_chunk() -> None:
    batch = [BALANCE] * 300
    assert split_calls(batch, max_calls=500, max_bytes=1 << 20) == [batch]


def test_the_count_limit_cuts() -> None:
    batch = [Call(TOKEN, bytes([i])) for i in range(7)]
    assert split_calls(batch, max_calls=3, max_bytes=1 << 20) == [batch[:3], batch[3:6], batch[6:]]


def test_the_byte_budget_cuts_where_the_next_call_would_exceed_it() -> None:
    batch = [BALANCE] * 10
    budget = EMPTY + 3 * 224  # exactly three calls
    chunks = split_calls(batch, max_calls=500, max_bytes=budget)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert all(len(encode_aggregate3(c)) <= budget for c in chunks)
    assert [len(c) for c in split_calls(batch, max_calls=500, max_bytes=budget - 1)] == [2] * 5


def test_a_call_alone_over_the_budget_goes_alone() -> None:
    big = Call(TOKEN, bytes(5000))
    chunks = split_calls([BALANCE, big, BALANCE], max_calls=500, max_bytes=1024)
    assert chunks == [[BALANCE], [big], [BALANCE]]


def test_nothing_to_split_is_no_chunk() -> None:
    assert split_calls([], max_calls=3) == []
    with pytest.raises(ValueError):
        split_calls([BALANCE], max_calls=0)


@given(
    st.lists(st.builds(Call, st.just(TOKEN), st.binary(max_size=300)), max_size=40),
    st.integers(1, 12),
    st.integers(EMPTY, 3000),
)
def test_chunks_keep_order_respect_both_limits_and_are_as_full_as_they_can_be(
    batch: list[Call], max_calls: int, max_bytes: int
) -> None:
    chunks = split_calls(batch, max_calls=max_calls, max_bytes=max_bytes)
    assert [c for chunk in chunks for c in chunk] == batch
    for i, chunk in enumerate(chunks):
        assert 1 <= len(chunk) <= max_calls
        assert len(chunk) == 1 or calldata_size(chunk) <= max_bytes
        if i + 1 < len(chunks):  # greedy: the next call did not fit
            grown = [*chunk, chunks[i + 1][0]]
            assert len(grown) > max_calls or calldata_size(grown) > max_bytes


def test_the_default_budget_leaves_the_most_balance_reads_in_one_call() -> None:
    """max_calls_per_batch is at most 1,000: for the service's own reads the count binds."""
    assert calldata_size([BALANCE] * 1000) <= multicall.MAX_CALLDATA_BYTES


# --- the reader against a fake node --------------------------------------------------------

FEED = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"
HOLDERS = [to_checksum_address(bytes([i]) * 20) for i in range(1, 6)]
BLOCK = 100


class FakeNode:
    """Answers aggregate3 at block 100: each holder's balance is its first byte times
    1,000; the feed answers ``round``.  ``spoil`` rewrites one provider's answers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.blocks: Counter[str] = Counter()  # eth_call's block argument -> calls
        self.spoil: dict[int, Callable[[bytes], bytes]] = {}  # provider position -> rewrite
        self.round = encode(
            ["uint80", "int256", "uint256", "uint256", "uint80"], [1, 3000 * 10**8, 5, 6, 1]
        )

        async def request(endpoint: Endpoint, method: str, params: list[Any]) -> Any:
            if method == "eth_chainId":
                return "0x1"
            assert method == "eth_call", method
            self.blocks[params[1]] += 1
            data = bytes.fromhex(params[0]["data"][2:])
            assert data[:4] == AGGREGATE3
            (batch,) = decode(["(address,bool,bytes)[]"], data[4:])
            out = encode(["(bool,bytes)[]"], [[self.answer(bytes(c)) for _, _, c in batch]])
            rewrite = self.spoil.get(endpoint.position)
            return "0x" + (rewrite(out) if rewrite else out).hex()

        monkeypatch.setattr(Endpoint, "request", request)

    def answer(self, call: bytes) -> tuple[bool, bytes]:
        if call in (GET_BLOCK_NUMBER, GET_CURRENT_BLOCK_TIMESTAMP):
            return True, (BLOCK if call == GET_BLOCK_NUMBER else 16).to_bytes(32, "big")
        if call == LATEST_ROUND_DATA:
            return True, self.round
        if call == DECIMALS:
            return True, (8).to_bytes(32, "big")
        assert call[:4] == BALANCE_OF
        return True, (call[-20] * 1000).to_bytes(32, "big")


def network(urls: int) -> NetworkSettings:
    eth = TokenSettings(symbol="ETH", address=TOKEN, decimals=18, price=PriceSettings(feed=FEED))
    return NetworkSettings(
        name="ethereum",
        chain_id=1,
        rpc_urls=tuple(f"http://node{i}.invalid/v3/SECRET" for i in range(urls)),
        tokens=(eth.token,),
        max_calls_per_batch=500,
    )


async def snapshot(urls: int = 1) -> Any:
    settings = network(urls)
    pool = ProviderPool(settings.name, settings.rpc_urls, ProviderPolicy(), chain_id=1)
    try:
        return await ChainReader(settings, pool, default_timeout=5).snapshot(
            HOLDERS, with_prices=True, timeout=5
        )
    finally:
        await pool.aclose()


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    return FakeNode(monkeypatch)


@on_loop
async def test_a_snapshot_reads_balances_and_the_feed(node: FakeNode) -> None:
    snap = await snapshot()
    assert snap.block_number == BLOCK
    assert snap.balances == {h: {"ETH": int(h[2:4], 16) * 1000} for h in HOLDERS}
    feed = snap.feeds["ETH"]
    assert (feed.answer, feed.decimals, feed.updated_at) == (3000 * 10**8, 8, 6)
    assert sum(node.blocks.values()) == 1


def truncate(out: bytes) -> bytes:
    return out[:-1]


def huge_length(out: bytes) -> bytes:
    return put(bytearray(out), 160, 2**256 - 1)  # the first result's length


@on_loop
@pytest.mark.parametrize("rewrite", [truncate, huge_length], ids=["truncated", "huge-length"])
async def test_a_malformed_answer_is_the_providers_fault(
    node: FakeNode, rewrite: Callable[[bytes], bytes]
) -> None:
    node.spoil[0] = rewrite
    with pytest.raises(ChainUnavailable, match="Multicall3 answer is malformed"):
        await snapshot()
    # With a second provider, the first one's malformed answer sends the read there.
    snap = await snapshot(urls=2)
    assert snap.balances[HOLDERS[0]] == {"ETH": 1000}


@on_loop
async def test_a_feed_word_that_does_not_fit_its_type_is_malformed_naming_the_token(
    node: FakeNode,
) -> None:
    node.round = (2**80).to_bytes(32, "big") + node.round[32:]  # roundId is a uint80
    with pytest.raises(ChainUnavailable, match="feed answer answer is malformed") as caught:
        await snapshot()
    assert caught.value.token == "ETH"


@on_loop
async def test_a_small_byte_budget_splits_the_snapshot_at_one_block(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 head calls, 5 balances, 2 feed reads: 9 calls of 192-224 bytes.
    monkeypatch.setattr(reader, "MAX_CALLDATA_BYTES", EMPTY + 3 * 224)
    snap = await snapshot()
    assert snap.balances == {h: {"ETH": int(h[2:4], 16) * 1000} for h in HOLDERS}
    assert snap.feeds["ETH"].answer == 3000 * 10**8
    # The first chunk chose the block; the other chunks are pinned to its number.
    assert node.blocks == Counter({"latest": 1, hex(BLOCK): 2})


@on_loop
async def test_a_split_snapshot_at_a_chosen_block_sends_every_chunk_pinned_to_it(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower's reads (and reads at head minus confirmations) name their block: no
    chunk waits for another's answer to learn it."""
    monkeypatch.setattr(reader, "MAX_CALLDATA_BYTES", EMPTY + 3 * 224)
    answer = Endpoint.request
    arrived: list[str] = []
    all_sent = asyncio.Event()

    async def together(endpoint: Endpoint, method: str, params: list[Any]) -> Any:
        if method == "eth_call":
            arrived.append(method)
            if len(arrived) == 3:
                all_sent.set()
            await asyncio.wait_for(all_sent.wait(), 10)  # a chunk sent after an answer: no set
        return await answer(endpoint, method, params)

    monkeypatch.setattr(Endpoint, "request", together)
    settings = network(1)
    pool = ProviderPool(settings.name, settings.rpc_urls, ProviderPolicy(), chain_id=1)
    try:
        snap = await ChainReader(settings, pool, default_timeout=5).snapshot(
            HOLDERS, with_prices=False, timeout=5, block_number=BLOCK
        )
    finally:
        await pool.aclose()
    assert snap.balances == {h: {"ETH": int(h[2:4], 16) * 1000} for h in HOLDERS}
    assert node.blocks == Counter({hex(BLOCK): 3})  # 2 head calls and 5 balances, 3 a chunk


@on_loop
async def test_a_failed_balance_read_is_an_error_naming_its_token_never_a_zero(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = node.answer

    def third_fails(call: bytes) -> tuple[bool, bytes]:
        if call[:4] == BALANCE_OF and call[-20] == 3:
            return False, b""
        return answer(call)

    monkeypatch.setattr(node, "answer", third_fails)
    with pytest.raises(ChainUnavailable, match="balance read failed") as caught:
        await snapshot()
    assert caught.value.token == "ETH"
