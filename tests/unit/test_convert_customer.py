"""``customer_balances_response`` builds its wallets in place (``add``): the message is the one
the plain constructor form gives, byte for byte, whatever the wallets hold."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from balances.v1 import balances_pb2 as pb
from service.api.convert import customer_balances_response
from service.domain import CustomerBalances, TokenAmount, Wallet, WalletBalance
from service.money import format_amount, format_fraction

amounts = st.lists(
    st.builds(
        TokenAmount,
        st.sampled_from(["USDC", "USDT", "ETH"]),
        st.integers(0, 2**256 - 1),
        st.sampled_from([0, 2, 6, 18]),
    ),
    max_size=3,
)
balances = st.lists(
    st.builds(
        lambda i, held, block, timestamp, stale: WalletBalance(
            Wallet(f"wal_{i}", "t", "cus_1", "polygon", f"0x{i:040x}", datetime.now(UTC)),
            tuple(held),
            block,
            timestamp,
            stale,
        ),
        st.integers(0, 10**6),
        amounts,
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**40),  # 0 included: last_updated is present even then
        st.booleans(),
    ),
    max_size=8,
)


def constructed(customer: CustomerBalances) -> pb.GetCustomerBalancesResponse:
    """The straightforward form (what the function built before it built in place)."""
    return pb.GetCustomerBalancesResponse(
        customer_id=customer.customer_id,
        total_balance=pb.Money(
            amount=format_fraction(customer.total, 2), currency=customer.total_currency
        ),
        wallets=[
            pb.CustomerWallet(
                wallet_id=w.wallet.wallet_id,
                network=w.wallet.network,
                address=w.wallet.address,
                balances=[
                    pb.TokenBalance(
                        currency=a.currency,
                        amount=format_amount(a.raw, a.decimals),
                        decimals=a.decimals,
                    )
                    for a in w.amounts
                ],
                last_updated=Timestamp(seconds=w.block_timestamp),
                block_number=w.block_number,
                stale=True if w.stale else None,
            )
            for w in customer.wallets
        ],
    )


@given(balances, st.integers(0, 10**12))
def test_the_customer_message_is_the_constructed_one_byte_for_byte(
    wallets: list[WalletBalance], cents: int
) -> None:
    customer = CustomerBalances("cus_1", Fraction(cents, 100), "USD", tuple(wallets))
    built = customer_balances_response(customer, 2)
    assert built == constructed(customer)
    assert built.SerializeToString(deterministic=True) == constructed(customer).SerializeToString(
        deterministic=True
    )
    for message in built.wallets:
        assert message.HasField("last_updated")
