"""Storage adapters, one package per backend (``sqlite``; ``postgres`` to come)."""
