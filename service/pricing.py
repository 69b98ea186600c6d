"""Prices of tokens in the base currency: fixed pegs, or feed answers read in the snapshot."""

from __future__ import annotations

from fractions import Fraction

from service.domain import FeedPrice, PegPrice, Snapshot, Token
from service.errors import PriceUnavailable

__all__ = ["token_price"]


def token_price(token: Token, snapshot: Snapshot) -> Fraction:
    """The exact price of one unit of ``token`` at the snapshot's block.

    A feed answer must be positive and no older than the token's ``max_age_seconds``
    measured against the block's own timestamp (not the wall clock), so a
    snapshot is judged by the chain state it was read from.
    """
    price = token.price
    if isinstance(price, PegPrice):
        return price.value
    assert isinstance(price, FeedPrice)
    reading = snapshot.feeds.get(token.currency)
    if reading is None:
        raise PriceUnavailable(snapshot.network, token.currency, "the price feed was not read")
    if reading.answer <= 0:
        raise PriceUnavailable(
            snapshot.network, token.currency, "the price feed answer is not positive"
        )
    age = snapshot.block_timestamp - reading.updated_at
    if age > price.max_age_seconds:
        raise PriceUnavailable(
            snapshot.network,
            token.currency,
            f"the price feed is stale ({age}s old, max {price.max_age_seconds}s)",
        )
    return Fraction(reading.answer, 10**reading.decimals)
