"""Chain adapter: JSON-RPC providers, Multicall3 payloads, snapshots and newHeads."""
