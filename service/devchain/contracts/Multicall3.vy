# pragma version 0.4.3
"""
@title Multicall3-compatible aggregator
@notice ABI-compatible with the canonical Multicall3 (0xcA11bde0...CA11) for
        aggregate3, getEthBalance, getBlockNumber and getCurrentBlockTimestamp.
        Vyper needs static bounds: at most MAX_CALLS calls per aggregate3, each
        callData at most MAX_CALLDATA bytes, each returnData at most MAX_RETURN
        bytes. A call whose return data is longer than MAX_RETURN counts as a
        failed call (never truncated). Keep these in step with
        service/devchain/compile.py MULTICALL3_MAX_CALLS.
"""

MAX_CALLS: constant(uint256) = 1024
MAX_CALLDATA: constant(uint256) = 132
MAX_RETURN: constant(uint256) = 256
# One byte over MAX_RETURN, so a longer return is seen (and failed), never cut.
RETURN_BUFFER: constant(uint256) = MAX_RETURN + 1

struct Call3:
    target: address
    allowFailure: bool
    callData: Bytes[MAX_CALLDATA]

struct Result:
    success: bool
    returnData: Bytes[RETURN_BUFFER]


@external
@payable
def aggregate3(calls: DynArray[Call3, MAX_CALLS]) -> DynArray[Result, MAX_CALLS]:
    results: DynArray[Result, MAX_CALLS] = []
    for c: Call3 in calls:
        success: bool = False
        data: Bytes[RETURN_BUFFER] = b""
        success, data = raw_call(
            c.target, c.callData, max_outsize=RETURN_BUFFER, revert_on_failure=False
        )
        if len(data) > MAX_RETURN:
            success = False
            data = b""
        assert success or c.allowFailure, "Multicall3: call failed"
        results.append(Result(success=success, returnData=data))
    return results


@external
@view
def getEthBalance(addr: address) -> uint256:
    return addr.balance


@external
@view
def getBlockNumber() -> uint256:
    return block.number


@external
@view
def getCurrentBlockTimestamp() -> uint256:
    return block.timestamp
