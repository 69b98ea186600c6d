"""Watching balances: the block follower, the watch hub and the watch use cases."""
