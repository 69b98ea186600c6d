"""The API services this server implements, by descriptor (for reflection, health and REST).

Imports only generated descriptors, so the REST sidecar can load it without the
chain, store or watch code.
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from balances.v1 import balances_pb2, wallets_pb2, webhooks_pb2

__all__ = ["API_SERVICES", "BALANCES_SERVICE", "WALLETS_SERVICE", "WEBHOOKS_SERVICE"]

BALANCES_SERVICE: ServiceDescriptor = balances_pb2.DESCRIPTOR.services_by_name["BalancesService"]
WALLETS_SERVICE: ServiceDescriptor = wallets_pb2.DESCRIPTOR.services_by_name["WalletsService"]
WEBHOOKS_SERVICE: ServiceDescriptor = webhooks_pb2.DESCRIPTOR.services_by_name["WebhooksService"]

API_SERVICES: tuple[ServiceDescriptor, ...] = (BALANCES_SERVICE, WALLETS_SERVICE, WEBHOOKS_SERVICE)
