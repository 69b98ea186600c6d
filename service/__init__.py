"""Balances service: exact ERC-20 and native balances from EVM chains, over gRPC and REST."""
