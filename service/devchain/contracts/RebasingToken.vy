# pragma version 0.4.3
"""
@title Dev rebasing token
@notice Balances are shares times an index: balanceOf = shares * index / 1e18.
        The owner's setIndex moves every holder's balance at once without a
        Transfer event (like stETH or aTokens), so only re-reading balances
        notices. Shares are minted by the owner; there are no transfers.
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event IndexChanged:
    index: uint256

ONE: constant(uint256) = 10**18

name: public(String[64])
symbol: public(String[32])
decimals: public(uint8)
owner: public(address)
index: public(uint256)
sharesOf: public(HashMap[address, uint256])
totalShares: public(uint256)


@deploy
def __init__(_name: String[64], _symbol: String[32], _decimals: uint8):
    self.name = _name
    self.symbol = _symbol
    self.decimals = _decimals
    self.owner = msg.sender
    self.index = ONE


@external
@view
def balanceOf(_holder: address) -> uint256:
    return self.sharesOf[_holder] * self.index // ONE


@external
@view
def totalSupply() -> uint256:
    return self.totalShares * self.index // ONE


@external
def mintShares(_to: address, _shares: uint256):
    assert msg.sender == self.owner, "RebasingToken: only owner"
    assert _to != empty(address), "RebasingToken: mint to zero address"
    self.sharesOf[_to] += _shares
    self.totalShares += _shares
    log Transfer(sender=empty(address), receiver=_to, value=_shares * self.index // ONE)


@external
def setIndex(_index: uint256):
    assert msg.sender == self.owner, "RebasingToken: only owner"
    assert _index > 0, "RebasingToken: index must be positive"
    self.index = _index
    log IndexChanged(index=_index)
