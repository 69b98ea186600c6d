"""``balances.v1.WalletsService``: parse, call the registry, convert."""

from __future__ import annotations

from typing import Any

from grpc import aio

from balances.v1 import wallets_pb2 as pb
from balances.v1 import wallets_pb2_grpc
from service.api.convert import wallet_message
from service.api.tenancy import caller_tenant
from service.registry import WalletRegistry

__all__ = ["WalletsServicer"]

Context = aio.ServicerContext[Any, Any]


class WalletsServicer(wallets_pb2_grpc.WalletsServiceServicer):
    def __init__(self, registry: WalletRegistry) -> None:
        self._registry = registry

    async def ImportWallet(
        self, request: pb.ImportWalletRequest, context: Context
    ) -> pb.ImportWalletResponse:
        wallet, created = await self._registry.import_wallet(
            caller_tenant(), request.customer_id, request.network, request.address
        )
        return pb.ImportWalletResponse(wallet=wallet_message(wallet), created=created)

    async def ListWallets(
        self, request: pb.ListWalletsRequest, context: Context
    ) -> pb.ListWalletsResponse:
        wallets, next_token = await self._registry.list_wallets(
            caller_tenant(), request.customer_id, request.page_size, request.page_token
        )
        return pb.ListWalletsResponse(
            wallets=[wallet_message(w) for w in wallets], next_page_token=next_token
        )

    async def GetWallet(
        self, request: pb.GetWalletRequest, context: Context
    ) -> pb.GetWalletResponse:
        wallet = await self._registry.get_wallet(
            caller_tenant(), request.customer_id, request.wallet_id
        )
        return pb.GetWalletResponse(wallet=wallet_message(wallet))

    async def DeleteWallet(
        self, request: pb.DeleteWalletRequest, context: Context
    ) -> pb.DeleteWalletResponse:
        await self._registry.delete_wallet(caller_tenant(), request.customer_id, request.wallet_id)
        return pb.DeleteWalletResponse()
