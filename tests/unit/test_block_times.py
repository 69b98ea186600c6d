"""Resolving a time to a block: the search, its boundaries, and what it remembers (a fake chain)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from service.block_times import AsOf, BlockTimes
from service.domain import BlockHeader, Snapshot
from service.errors import InvalidArgument

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class Chain:
    """Blocks with the given timestamps; counts the headers asked for."""

    def __init__(self, times: list[int]) -> None:
        self.times = times
        self.asked = 0

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        raise NotImplementedError

    async def head_number(self) -> int:
        return len(self.times) - 1

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        self.asked += 1
        number = len(self.times) - 1 if tag_or_number == "latest" else int(tag_or_number)
        return BlockHeader(number, f"0x{number:064x}", "", self.times[number])


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# 0:100, 1:110, 2:110, 3:130, ... 9:190; the clock is long after.
TIMES = [100, 110, 110, *range(130, 200, 10)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("seconds", "block"),
    [
        (100, 0),
        (109.999, 0),
        (110, 2),  # two blocks share it: the later
        (129, 2),
        (130, 3),
        (185, 8),
        (190, 9),  # the head's own time
        (10**9, 9),  # after the head, before the clock
    ],
)
async def test_the_last_block_at_or_before(seconds: float, block: int) -> None:
    times = BlockTimes({"x": 2}, clock=lambda: at(2 * 10**9))
    assert (await times.block_at("x", Chain(TIMES), at(seconds))).number == block


@pytest.mark.asyncio
async def test_before_the_first_block_or_in_the_future_is_refused_naming_at_time() -> None:
    times = BlockTimes({"x": 2}, clock=lambda: at(500))
    with pytest.raises(InvalidArgument) as early:
        await times.block_at("x", Chain(TIMES), at(99))
    assert early.value.field == "at_time"
    with pytest.raises(InvalidArgument) as late:
        await times.block_at("x", Chain(TIMES), at(501))
    assert late.value.field == "at_time" and "future" in str(late.value)
    # After the head but not after the clock: the head.
    assert (await times.block_at("x", Chain(TIMES), at(499))).number == 9


@pytest.mark.asyncio
async def test_a_block_after_the_head_is_refused_naming_at_block() -> None:
    times = BlockTimes({"x": 2})
    assert await times.head("x", Chain(TIMES), 9) == 9
    with pytest.raises(InvalidArgument) as caught:
        await times.head("x", Chain(TIMES), 10)
    assert caught.value.field == "at_block"


@pytest.mark.asyncio
async def test_only_what_is_final_is_remembered() -> None:
    chain = Chain(TIMES)
    times = BlockTimes({"x": 2}, clock=lambda: NOW)
    first = await times.block_at("x", chain, at(135))  # block 3; block 4 is final (<= 7)
    assert first.number == 3 and first.head == 9
    chain.asked = 0
    again = await times.block_at("x", chain, at(135))
    assert again.number == 3 and again.head is None and chain.asked == 0
    # Block 8's successor (9) is within the depth: asked again each time.
    await times.block_at("x", chain, at(185))
    chain.asked = 0
    assert (await times.block_at("x", chain, at(185))).number == 8
    assert chain.asked >= 1
    # A network with no depth configured remembers nothing.
    unknown = BlockTimes({}, clock=lambda: NOW)
    await unknown.block_at("y", chain, at(135))
    chain.asked = 0
    await unknown.block_at("y", chain, at(135))
    assert chain.asked > 1


@pytest.mark.asyncio
async def test_bounded() -> None:
    chain = Chain(list(range(0, 10_000, 10)))
    times = BlockTimes({"x": 0}, clock=lambda: NOW, max_entries=5)
    for k in range(50):
        await times.block_at("x", chain, at(k * 70 + 5))
    assert len(times._timestamps) <= 5 and len(times._blocks) <= 5


def test_as_of_is_one_of_the_two() -> None:
    with pytest.raises(ValueError):
        AsOf()
    with pytest.raises(ValueError):
        AsOf(block=1, time=NOW)
    assert AsOf(block=0).block == 0 and AsOf(time=NOW - timedelta(1)).time is not None
