"""Settled contracts and usage built directly (fast, many at once) for the query-count and
changelist tests: each contract gets its two filled orders, the trade, its escrow funded and
released by a settlement transaction, and its Settlement row, with the money given by the
test. The worked example itself goes through the real services (conftest.worked_example)."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

from django.db.models import Max

from marketplace.models import Account, Hardware, Instrument, Order, Trade
from metering.ledger import ledger_account_ids, ledger_post, system_account
from metering.models import LedgerAccount, LedgerTransaction, Settlement, UsageEvent
from metering.services import funds_deposit

M = 1_000_000
_event_ids = itertools.count(1)


def _next_sequence(instrument: Instrument) -> int:
    top = Order.objects.filter(instrument=instrument).aggregate(m=Max("sequence"))["m"] or 0
    return top + 1


def settled_contract(
    *,
    instrument: Instrument,
    buyer: Account,
    seller: Account,
    quantity: int,
    price: str,
    delivered: int,
    value: str,
    buyer_fee: str,
    seller_fee: str,
    escrow: str,
    overage: int = 0,
    seller_fee_bps: int = 5,
) -> Trade:
    price_d = Decimal(price)
    seq = _next_sequence(instrument)
    hw = Hardware.objects.get(code="h100")
    tier = instrument.tier
    terms = {
        "unused_capacity_share": tier.unused_capacity_share,
        "output_token_weight": tier.output_token_weight,
        "cached_input_weight": tier.cached_input_weight,
    }
    common = {
        "instrument": instrument,
        "quantity": quantity,
        "price": price_d,
        "status": "filled",
        "filled_quantity": quantity,
        "pending_match": False,
        # Terms frozen at placement: today's fee rates and the instrument's tier.
        "maker_fee_bps": 5,
        "taker_fee_bps": 10,
        **terms,
    }
    # The sell rests first, the buy takes it: the buyer pays the taker's 10 bps, the seller 5.
    sell = Order.objects.create(
        account=seller, side="sell", sequence=seq, hardware=hw, **{**common, "maker_fee_bps": seller_fee_bps}
    )
    buy = Order.objects.create(account=buyer, side="buy", sequence=seq + 1, **common)
    last = Trade.objects.filter(instrument=instrument).aggregate(m=Max("match_sequence"))["m"] or 0
    trade = Trade.objects.create(
        instrument=instrument,
        buy_order=buy,
        sell_order=sell,
        buyer=buyer,
        seller=seller,
        hardware=hw,
        quantity=quantity,
        price=price_d,
        aggressor_side="buy",
        match_sequence=last + 1,
        buyer_fee_bps=10,
        seller_fee_bps=seller_fee_bps,
        buyer_escrow=Decimal(escrow),
        **terms,
    )
    value_d, bfee, sfee, escrow_d = Decimal(value), Decimal(buyer_fee), Decimal(seller_fee), Decimal(escrow)
    payout = value_d - sfee
    refund = escrow_d - value_d - bfee
    available = ledger_account_ids([buyer.pk, seller.pk], LedgerAccount.Kind.AVAILABLE)
    escrow_ids = ledger_account_ids([buyer.pk], LedgerAccount.Kind.ESCROW)
    fees = system_account(LedgerAccount.Kind.FEES).pk
    # The buyer funds the contract's escrow, then settlement releases it as the service does.
    funds_deposit(account=buyer, amount=escrow_d, reason="test funding")
    ledger_post(
        key=f"reserve:test:{trade.pk}",
        kind=LedgerTransaction.Kind.ESCROW_RESERVE,
        legs=[(available[buyer.pk], -escrow_d), (escrow_ids[buyer.pk], escrow_d)],
    )
    txn = ledger_post(
        key=f"settle:{trade.pk}",
        kind=LedgerTransaction.Kind.SETTLEMENT,
        legs=[
            (escrow_ids[buyer.pk], -escrow_d),
            (available[seller.pk], payout),
            (fees, bfee + sfee),
            (available[buyer.pk], refund),
        ],
        memo=f"settlement of trade {trade.pk}",
    )
    Settlement.objects.create(
        trade=trade,
        delivered_tokens=delivered,
        unused_tokens=quantity - delivered,
        value=value_d,
        buyer_fee=bfee,
        seller_fee=sfee,
        provider_payout=payout,
        refund=refund,
        overage_tokens=overage,
        transaction=txn,
    )
    return trade


def usage(*, instrument: Instrument, provider: Account, buyer: Account, billable: int) -> UsageEvent:
    return UsageEvent.objects.create(
        provider=provider,
        buyer=buyer,
        instrument=instrument,
        event_id=f"evt-{next(_event_ids)}",
        occurred_at=instrument.delivery_start + dt.timedelta(hours=1),
        input_tokens=billable,
        cached_input_tokens=0,
        output_tokens=0,
        billable_tokens=billable,
        payload_hash="0" * 64,
    )
