"""``make bench``: how far the service is from the fastest it could be.

Builds its own world (local anvil chains, contracts, tens of thousands of
funded wallets, a SQLite directory), starts a real ``balances serve`` process
and measures each path against a reference measured in the same run,
interleaved, then writes ``BENCHMARKS.md``.  Run it with ``make bench`` or
``.venv/bin/python -m scripts.bench``.
"""
