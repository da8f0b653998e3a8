"""Worked examples, read like accounting exercises: every balance, fee and refund to the cent.

Catalog defaults: standard tier output weight 3, cached-input weight 0.25, unused-capacity
share 0.25; batch tier share 0 (pay per use); maker fee 5 bps, taker fee 10 bps.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketplace.models import Instrument
from metering.ledger import system_account
from metering.models import LedgerTransaction, Settlement, UsageEvent
from metering.selectors import balances_get
from metering.settlement import settlements_run_due
from metering.usage import usage_ingest
from pricing.services import instrument_match
from tests import factories
from tests.invariants import assert_invariants

from .builders import D, after_grace, contract, event, spot_instrument

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fees(settings):
    settings.MAKER_FEE_BPS = 5
    settings.TAKER_FEE_BPS = 10


def fees_balance() -> Decimal:
    return system_account("fees").balance


def test_deposit_1000_buy_200_mtok_at_1_50_deliver_150_mtok_settle(catalog):
    buyer = factories.AccountFactory(is_buyer=True)
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    inst = spot_instrument(tier="standard")

    factories.fund(buyer, D("1000.00"))
    assert balances_get(account=buyer) == {"available": D("1000.00"), "escrow": D("0.00"), "owed": D("0.00")}

    # The provider's sell rests (maker, 5 bps); the buyer's buy takes it (taker, 10 bps).
    # At placement the buy reserves 200 Mtok x 1.50 = 300.00 + the highest fee (10 bps: 0.30),
    # rounded up once: 300.30.
    factories.place(provider, inst, "sell", 200, "1.50")
    factories.place(buyer, inst, "buy", 200, "1.50")
    assert balances_get(account=buyer) == {"available": D("699.70"), "escrow": D("300.30"), "owed": D("0.00")}

    # The fill at the limit as taker: the contract keeps 300.00 value + 0.30 taker fee = 300.30;
    # nothing comes back.
    instrument_match(instrument_id=inst.pk)
    trade = inst.trades.get()
    assert (trade.quantity, trade.price, trade.buyer_fee_bps, trade.seller_fee_bps) == (200_000_000, D("1.50"), 10, 5)
    assert trade.buyer_escrow == D("300.30")
    assert balances_get(account=buyer) == {"available": D("699.70"), "escrow": D("300.30"), "owed": D("0.00")}

    # Deliver 150 Mtok: 240 requests of 400,000 prompt tokens (100,000 of them cached) and
    # 100,000 completion tokens = 300,000 + 100,000 x 0.25 + 100,000 x 3 = 625,000 billable each.
    events = [event(buyer, inst, prompt=400_000, cached=100_000, completion=100_000) for _ in range(240)]
    report = usage_ingest(provider=provider, events=events)
    assert report.count("accepted") == 240
    assert {r.billable_tokens for r in report.results} == {625_000}
    assert sum(UsageEvent.objects.values_list("billable_tokens", flat=True)) == 150_000_000

    # Settle after the period and the grace period:
    # unused 50 Mtok x share 0.25 = 12.5 Mtok still paid -> value (150 + 12.5) x 1.50 = 243.75
    # buyer fee 243.75 x 10 bps = 0.24375 -> 0.24; seller fee 243.75 x 5 bps = 0.121875 -> 0.12
    # provider receives 243.75 - 0.12 = 243.63; refund 300.30 - 243.75 - 0.24 = 56.31.
    settled = settlements_run_due(now=after_grace(inst))
    assert settled.contracts == 1 and settled.overage_tokens == 0
    s = Settlement.objects.get(trade=trade)
    assert (s.delivered_tokens, s.unused_tokens, s.overage_tokens) == (150_000_000, 50_000_000, 0)
    assert (s.value, s.buyer_fee, s.seller_fee, s.provider_payout, s.refund) == (
        D("243.75"), D("0.24"), D("0.12"), D("243.63"), D("56.31"),
    )
    assert s.transaction.key == f"settle:{trade.pk}"
    assert balances_get(account=buyer) == {"available": D("756.01"), "escrow": D("0.00"), "owed": D("0.00")}
    assert balances_get(account=provider) == {"available": D("243.63"), "escrow": D("0.00"), "owed": D("0.00")}
    assert fees_balance() == D("0.36")
    assert system_account("deposits").balance == D("-1000.00")
    inst.refresh_from_db()
    assert inst.status == Instrument.Status.SETTLED

    # Running it again settles nothing and moves nothing.
    assert settlements_run_due(now=after_grace(inst)).contracts == 0
    assert LedgerTransaction.objects.filter(kind="settlement").count() == 1
    assert_invariants()


def test_pay_per_use_with_overage_across_two_contracts_oldest_first(catalog):
    """Batch tier (share 0): two contracts of 10 Mtok; 25 Mtok delivered -> 10 + 10, 5 overage."""
    buyer = factories.AccountFactory(is_buyer=True)
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, D("100.00"))
    inst = spot_instrument(tier="batch")
    first = contract(buyer, provider, inst, 10, "2.00", maker="buyer")  # buyer maker: 5 bps
    second = contract(buyer, provider, inst, 10, "1.00", maker="provider")  # buyer taker: 10 bps
    # Escrow: first 20.00 + 0.01 (0.01 rounded up), second 10.00 + 0.01.
    assert (first.buyer_escrow, second.buyer_escrow) == (D("20.01"), D("10.01"))
    # batch weights: output 2, cached 0.5 -> 1,000,000 prompt + 2,000,000 completion = 5,000,000
    usage_ingest(provider=provider, events=[event(buyer, inst, prompt=1_000_000, completion=2_000_000) for _ in range(5)])

    settlements_run_due(now=after_grace(inst))
    a, b = Settlement.objects.get(trade=first), Settlement.objects.get(trade=second)
    # first: 10 Mtok x 2.00 = 20.00, buyer fee 5 bps 0.01, seller fee 10 bps 0.02, refund 0.00
    assert (a.delivered_tokens, a.value, a.buyer_fee, a.seller_fee, a.provider_payout, a.refund, a.overage_tokens) == (
        10_000_000, D("20.00"), D("0.01"), D("0.02"), D("19.98"), D("0.00"), 0,
    )
    # second: 10 Mtok x 1.00 = 10.00, buyer fee 10 bps 0.01, seller fee 5 bps 0.00 (0.005 -> 0.00
    # half-even), refund 0.00; the 5 Mtok beyond both contracts are overage, not charged.
    assert (b.delivered_tokens, b.value, b.buyer_fee, b.seller_fee, b.provider_payout, b.refund, b.overage_tokens) == (
        10_000_000, D("10.00"), D("0.01"), D("0.00"), D("10.00"), D("0.00"), 5_000_000,
    )
    assert balances_get(account=buyer) == {"available": D("69.98"), "escrow": D("0.00"), "owed": D("0.00")}
    assert balances_get(account=provider)["available"] == D("29.98")
    assert fees_balance() == D("0.04")
    assert_invariants()


def test_nothing_delivered_take_or_pay_share_and_full_refund(catalog):
    """Frontier tier (share 0.5): 4 Mtok at 3.00, nothing delivered -> pays 2 Mtok x 3.00 = 6.00."""
    buyer = factories.AccountFactory(is_buyer=True)
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, D("50.00"))
    inst = spot_instrument(tier="frontier")
    t = contract(buyer, provider, inst, 4, "3.00")
    assert t.buyer_escrow == D("12.02")  # 12.00 + 0.012 rounded up
    settlements_run_due(now=after_grace(inst))
    s = Settlement.objects.get(trade=t)
    # value 6.00; buyer fee 10 bps = 0.006 -> 0.01; seller fee 5 bps = 0.003 -> 0.00
    assert (s.value, s.buyer_fee, s.seller_fee, s.provider_payout, s.refund) == (
        D("6.00"), D("0.01"), D("0.00"), D("6.00"), D("6.01"),
    )
    assert balances_get(account=buyer)["available"] == D("43.99")
    assert balances_get(account=provider)["available"] == D("6.00")
    assert_invariants()
