"""``balances.v1.WebhooksService``: parse, call the webhook use cases, convert."""

from __future__ import annotations

from typing import Any

from grpc import aio

from balances.v1 import webhooks_pb2 as pb
from balances.v1 import webhooks_pb2_grpc
from service.api.convert import datetime_from_timestamp, webhook_config_message
from service.api.tenancy import caller_tenant
from service.errors import InvalidArgument
from service.webhooks.manage import WebhookManagement

__all__ = ["WebhooksServicer"]

Context = aio.ServicerContext[Any, Any]


class WebhooksServicer(webhooks_pb2_grpc.WebhooksServiceServicer):
    def __init__(self, management: WebhookManagement) -> None:
        self._management = management

    async def GetWebhookConfig(
        self, request: pb.GetWebhookConfigRequest, context: Context
    ) -> pb.GetWebhookConfigResponse:
        config = await self._management.get_config(caller_tenant())
        return pb.GetWebhookConfigResponse(config=webhook_config_message(config))

    async def UpdateWebhookConfig(
        self, request: pb.UpdateWebhookConfigRequest, context: Context
    ) -> pb.UpdateWebhookConfigResponse:
        change = await self._management.update_config(
            caller_tenant(), request.url, list(request.events), request.rotate_secret
        )
        return pb.UpdateWebhookConfigResponse(
            config=webhook_config_message(change.config),
            secret=change.config.secret if change.secret_changed else "",
            created=change.created,
        )

    async def ReplayWebhookEvents(
        self, request: pb.ReplayWebhookEventsRequest, context: Context
    ) -> pb.ReplayWebhookEventsResponse:
        if not request.HasField("since"):
            raise InvalidArgument("since is required (e.g. 2024-01-15T10:30:00Z)", field="since")
        since = datetime_from_timestamp(request.since, "since")
        count = await self._management.replay(caller_tenant(), since)
        return pb.ReplayWebhookEventsResponse(requeued_count=min(count, 2**31 - 1))
