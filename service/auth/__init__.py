"""API keys: their format and digests, and the authenticator use case."""
