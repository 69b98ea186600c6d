"""The caller's tenant for the current RPC, set by the auth interceptor."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["caller_tenant", "current_tenant"]

current_tenant: ContextVar[str] = ContextVar("current_tenant")


def caller_tenant() -> str:
    """The authenticated tenant; a LookupError here means a route skipped authentication."""
    return current_tenant.get()
