"""``balances.v1.BalancesService``: parse, call the use case, convert."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from grpc import aio

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.api.convert import (
    as_of,
    customer_balances_response,
    customer_watch_response,
    wallet_balance_response,
    wallet_watch_response,
)
from service.api.tenancy import caller_tenant
from service.balances import BalanceQueries
from service.errors import FeatureDisabled
from service.watch.hub import WalletUpdate, WatchUpdate
from service.watch.watches import BalanceWatches

__all__ = ["BalancesServicer"]

# Wallet watch messages kept for the other streams that are sent the same update.
_SHARED_MESSAGES = 1024
# Wallet balance answers kept for the next calls that get the same balance (~1 KB each).
_WALLET_RESPONSES = 4096


class BalancesServicer(balances_pb2_grpc.BalancesServiceServicer):
    def __init__(
        self,
        queries: BalanceQueries,
        minor_unit_digits: int,
        watches: BalanceWatches | None = None,
    ) -> None:
        self._queries = queries
        self._minor_unit_digits = minor_unit_digits
        self._watches = watches
        # (id of the hub's WalletUpdate, coalesced count) -> (that update, its message).
        # The hub hands one WalletUpdate to every stream sent the same state from the same
        # previous one; holding it keeps its id from being reused while it is a key here.
        self._messages: OrderedDict[
            tuple[int, int], tuple[WalletUpdate, pb.WatchWalletBalanceResponse]
        ] = OrderedDict()
        # A warm GetWalletBalance answers from one cached snapshot many times: the message,
        # a pure function of the WalletBalance (a tuple: hashed and compared by value, all
        # of it), is built once per balance (~12 µs of Python a call, measured).  grpc
        # and the REST shim only read it.
        self._wallet_response = functools.lru_cache(_WALLET_RESPONSES)(wallet_balance_response)

    async def GetWalletBalance(
        self, request: pb.GetWalletBalanceRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetWalletBalanceResponse:
        balance = await self._queries.wallet_balance(
            caller_tenant(), request.wallet_id, context.time_remaining(), as_of=as_of(request)
        )
        return self._wallet_response(balance)

    async def GetCustomerBalances(
        self, request: pb.GetCustomerBalancesRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetCustomerBalancesResponse:
        balances = await self._queries.customer_balances(
            caller_tenant(), request.customer_id, context.time_remaining(), as_of=as_of(request)
        )
        return customer_balances_response(balances, self._minor_unit_digits)

    async def WatchWalletBalance(
        self, request: pb.WatchWalletBalanceRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchWalletBalanceResponse]:
        watches = await self._watching(context)
        async with aclosing(watches.watch_wallet(caller_tenant(), request.wallet_id)) as updates:
            async for update in updates:
                yield self._wallet_message(update)

    async def WatchCustomerBalances(
        self, request: pb.WatchCustomerBalancesRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchCustomerBalancesResponse]:
        watches = await self._watching(context)
        tenant = caller_tenant()
        async with aclosing(watches.watch_customer(tenant, request.customer_id)) as updates:
            async for update in updates:
                yield customer_watch_response(update, self._minor_unit_digits)

    def _wallet_message(self, update: WatchUpdate) -> pb.WatchWalletBalanceResponse:
        """Built once for all the streams of a wallet sent the same update (gRPC encodes
        it per stream; protobuf messages are only read there)."""
        if update.initial:
            return wallet_watch_response(update)  # read per stream: nothing to share
        (wallet,) = update.wallets
        key = (id(wallet), update.coalesced_updates)
        built = self._messages.get(key)
        if built is not None and built[0] is wallet:
            return built[1]
        message = wallet_watch_response(update)
        self._messages[key] = (wallet, message)
        if len(self._messages) > _SHARED_MESSAGES:
            self._messages.popitem(last=False)
        return message

    async def _watching(self, context: aio.ServicerContext[Any, Any]) -> BalanceWatches:
        if self._watches is None:
            raise FeatureDisabled("watch", "watching is not enabled")
        return self._watches
