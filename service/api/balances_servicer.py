"""``balances.v1.BalancesService``: parse, call the use case, convert."""

from __future__ import annotations

from typing import Any

from grpc import aio

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.api.convert import customer_balances_response, wallet_balance_response
from service.api.tenancy import caller_tenant
from service.balances import BalanceQueries

__all__ = ["BalancesServicer"]


class BalancesServicer(balances_pb2_grpc.BalancesServiceServicer):
    def __init__(self, queries: BalanceQueries, currency_digits: int) -> None:
        self._queries = queries
        self._currency_digits = currency_digits

    async def GetWalletBalance(
        self, request: pb.GetWalletBalanceRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetWalletBalanceResponse:
        balance = await self._queries.wallet_balance(
            caller_tenant(), request.wallet_id, context.time_remaining()
        )
        return wallet_balance_response(balance)

    async def GetCustomerBalances(
        self, request: pb.GetCustomerBalancesRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetCustomerBalancesResponse:
        balances = await self._queries.customer_balances(
            caller_tenant(), request.customer_id, context.time_remaining()
        )
        return customer_balances_response(balances, self._currency_digits)
