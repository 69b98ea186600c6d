"""``build_webhooks``: the webhook parts from settings and a store, ready to wire in.

In ``server.py``::

    webhooks = build_webhooks(settings, components.directory)
    webhooks.add_to_server(server)           # + webhooks.service_descriptor in API_SERVICES
    followers get webhooks.emitter as a ChangeListener and a WatchedSource
    await webhooks.delivery.start()  ...  await webhooks.delivery.aclose()
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

from balances.v1 import webhooks_pb2, webhooks_pb2_grpc
from service.config import Settings
from service.directory.base import WebhookStore
from service.webhooks.delivery import WebhookDelivery
from service.webhooks.emitter import WebhookEmitter
from service.webhooks.manage import WebhookManagement
from service.webhooks.servicer import WebhooksServicer

__all__ = ["SERVICE_DESCRIPTOR", "WebhookComponents", "build_webhooks"]

SERVICE_DESCRIPTOR: ServiceDescriptor = webhooks_pb2.DESCRIPTOR.services_by_name["WebhooksService"]


@dataclass(frozen=True)
class WebhookComponents:
    """The webhook parts of one server; only ``delivery`` has a lifecycle (start/aclose)."""

    emitter: WebhookEmitter  # a ChangeListener and a WatchedSource for the block followers
    delivery: WebhookDelivery  # start() after the server starts, aclose() before the store
    management: WebhookManagement  # the use cases (config, replay) behind the servicer
    servicer: WebhooksServicer
    service_descriptor: ServiceDescriptor  # for reflection and the REST shim

    def add_to_server(self, server: aio.Server) -> None:
        webhooks_pb2_grpc.add_WebhooksServiceServicer_to_server(self.servicer, server)


def build_webhooks(settings: Settings, store: WebhookStore) -> WebhookComponents:
    """Wire emitter -> outbox -> delivery, and the servicer; nothing is started."""
    delivery = WebhookDelivery(store, settings.webhooks)
    management = WebhookManagement(store, settings.webhooks, wake_delivery=delivery.wake)
    return WebhookComponents(
        emitter=WebhookEmitter(store, on_enqueued=delivery.wake),
        delivery=delivery,
        management=management,
        servicer=WebhooksServicer(management),
        service_descriptor=SERVICE_DESCRIPTOR,
    )
