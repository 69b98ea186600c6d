# pragma version 0.4.3
"""
@title Dev price feed
@notice Chainlink AggregatorV3Interface-style feed whose owner sets the answer.
        setRoundData lets tests back-date updatedAt to make the feed stale.
"""

decimals: public(uint8)
description: public(String[64])
version: public(constant(uint256)) = 4
owner: public(address)

_round_id: uint80
_answer: int256
_started_at: uint256
_updated_at: uint256


@deploy
def __init__(_decimals: uint8, _description: String[64], _answer: int256):
    self.decimals = _decimals
    self.description = _description
    self.owner = msg.sender
    self._new_round(_answer, block.timestamp)


@internal
def _new_round(_answer: int256, _updated_at: uint256):
    self._round_id += 1
    self._answer = _answer
    self._started_at = _updated_at
    self._updated_at = _updated_at


@external
def setAnswer(_answer: int256):
    assert msg.sender == self.owner, "PriceFeed: only owner"
    self._new_round(_answer, block.timestamp)


@external
def setRoundData(_answer: int256, _updated_at: uint256):
    assert msg.sender == self.owner, "PriceFeed: only owner"
    self._new_round(_answer, _updated_at)


@external
@view
def latestAnswer() -> int256:
    return self._answer


@external
@view
def latestRoundData() -> (uint80, int256, uint256, uint256, uint80):
    return self._round_id, self._answer, self._started_at, self._updated_at, self._round_id
