"""Dev tooling: Vyper contracts, anvil nodes and the demo world (never used in production)."""
