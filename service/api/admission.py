"""Admission of a call: every RPC but health and reflection needs an API key, within its limits.

The key arrives as ``x-api-key`` metadata (REST: the ``X-API-Key`` header,
forwarded by the gateway).  The tenant it belongs to is put in a context
variable for the servicers and in the request's scope for its log lines; the
key itself is never logged.

Right after authentication the call is admitted by its key's quotas
(``service.quotas``): unary calls take a rate-limit token and an in-flight
place, watch streams a token and a stream place, given back when the call
ends however it ends.  A call over a limit may wait a moment for room; a
refusal is ``RESOURCE_EXHAUSTED`` with ``google.rpc.ErrorInfo`` (``RATE_LIMITED``)
and ``google.rpc.RetryInfo`` in the status details.

The server's one interceptor (``service.api.interceptors``) calls this for
every method ``needs_key`` says needs one.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn

from grpc import aio

from service.api.status import rich_status
from service.api.tenancy import current_tenant
from service.auth.authenticator import Authenticator
from service.errors import RateLimited
from service.quotas import CallKind, CallQuotas
from service.request_context import RequestScope

__all__ = ["OPEN_SERVICES", "Admission", "needs_key", "refuse"]

# Infrastructure that load balancers and grpcurl must reach without a key.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def needs_key(method: str) -> bool:
    return not method.startswith(OPEN_SERVICES)


class Admission:
    """Authentication, then the key's quotas."""

    def __init__(self, authenticator: Authenticator, quotas: CallQuotas) -> None:
        self._authenticate = authenticator.authenticate
        self._quotas = quotas

    async def admit(
        self,
        api_key: str | None,
        context: aio.ServicerContext[Any, Any],
        kind: CallKind,
        scope: RequestScope,
    ) -> AbstractAsyncContextManager[None]:
        """The call's place in its key's quotas, to enter (``RateLimited`` when over a limit).

        Raises ``Unauthenticated`` first when ``api_key`` is missing, unknown or revoked.
        The tenant is set for the servicers and noted in ``scope`` (the current request's).
        """
        tenant, key_id = await self._authenticate(api_key)
        current_tenant.set(tenant)
        scope.tenant = tenant  # for the call's log lines
        return self._quotas.admit(tenant, key_id, kind, time_left=context.time_remaining())


async def refuse(context: aio.ServicerContext[Any, Any], refused: RateLimited) -> NoReturn:
    """End the call as the error mapping would, plus the RetryInfo trailer.

    Aborting here (not raising to the error mapping) also keeps refusals out of
    the log: a client in a retry loop must not be able to flood it.
    """
    status = rich_status(refused)
    trailers = (*(context.trailing_metadata() or ()), status.trailer())
    await context.abort(status.code, status.message, trailers)
    raise AssertionError("abort returned")  # pragma: no cover
