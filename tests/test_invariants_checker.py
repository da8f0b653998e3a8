"""The invariant checker catches broken databases.

Each test builds a sound market through the services, breaks one thing behind their back (raw
SQL, queryset update, bulk_create) and requires tests.invariants to name it. On PostgreSQL the
database itself refuses some of these states (ledger triggers, CHECK constraints);
`guards_off` lifts them for the rest of the test's transaction, which is rolled back, so every
case runs on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F

from marketplace.models import Hardware, Order, Trade
from metering.funding import funding_withdrawal_request
from metering.ledger import ledger_account_ids, ledger_post, system_account
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction, Settlement, UsageEvent
from metering.settlement import instrument_settle
from metering.usage import usage_ingest
from pricing.services import instrument_match
from tests import factories
from tests.invariants import assert_invariants, order_reservation
from tests.metering.builders import after_grace, contract, event, spot_instrument

D = Decimal
pytestmark = pytest.mark.django_db
breaks = pytest.mark.breaks_invariants


@contextmanager
def guards_off(*checks: tuple[str, str]) -> Iterator[None]:
    """Let raw writes past the database's own guards: ledger triggers and the named CHECKs.

    PostgreSQL: queued deferred checks fire first (ALTER TABLE refuses pending trigger events),
    then triggers are off for the transaction (session_replication_role) and each CHECK is
    dropped inside it; the test's rollback restores all of it. SQLite has no ledger triggers
    and ignores CHECKs while the pragma is on.
    """
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cur.execute("SET LOCAL session_replication_role = replica")
            for table, name in checks:
                cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        elif checks:
            cur.execute("PRAGMA ignore_check_constraints = ON")
    try:
        yield
    finally:
        if connection.vendor != "postgresql" and checks:
            with connection.cursor() as cur:
                cur.execute("PRAGMA ignore_check_constraints = OFF")


@pytest.fixture
def market(catalog, settings):
    """A sound exchange: a settled instrument, an unsettled contract, resting orders, a live buy.

    Settled (batch tier, output weight 2): two 10 Mtok contracts of one pair, 13 Mtok of usage
    -> 10 + 3 delivered. Forward (standard tier): a 5 Mtok contract at 1.20 (unsettled), a
    resting buy of 4 Mtok at 1.00 (live, escrow reserved) and a resting sell at 2.00 (h100).
    """
    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = 5, 10
    buyer = factories.AccountFactory(is_buyer=True)
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, D("1000.00"))

    spot = spot_instrument(tier="batch")
    first = contract(buyer, provider, spot, 10, "2.00", maker="buyer")
    second = contract(buyer, provider, spot, 10, "1.00", maker="provider")
    report = usage_ingest(
        provider=provider,
        events=[event(buyer, spot, prompt=1_000_000, completion=1_000_000, event_id=f"e{i}") for i in range(4)]
        + [event(buyer, spot, prompt=1_000_000, event_id="e-last")],
    )
    assert report.count("accepted") == 5
    instrument_settle(instrument_id=spot.pk, now=after_grace(spot))

    fwd = factories.open_instrument(tier="standard")
    open_contract = contract(buyer, provider, fwd, 5, "1.20")
    live_buy = factories.place(buyer, fwd, "buy", 4, "1.00")
    resting_sell = factories.place(provider, fwd, "sell", 3, "2.00")
    instrument_match(instrument_id=fwd.pk)
    live_buy.refresh_from_db()
    assert live_buy.status == "open" and not live_buy.pending_match

    return {
        "buyer": buyer,
        "provider": provider,
        "spot": spot,
        "first": first,
        "second": second,
        "fwd": fwd,
        "open_contract": open_contract,
        "live_buy": live_buy,
        "resting_sell": resting_sell,
    }


def ledger_id(account, kind: str) -> int:
    return ledger_account_ids([account.pk], kind)[account.pk]


def append_entries(key: str, legs: list[tuple[int, Decimal]]) -> None:
    """Write a transaction's entries and balances directly, each with a correct running balance."""
    txn = LedgerTransaction.objects.create(key=key, kind="deposit")
    for account_id, amount in legs:
        after = LedgerAccount.objects.get(pk=account_id).balance + amount
        LedgerAccount.objects.filter(pk=account_id).update(balance=after)
        LedgerEntry.objects.bulk_create(
            [LedgerEntry(transaction=txn, account_id=account_id, amount=amount, balance_after=after)]
        )


def test_a_sound_market_passes(market):
    s1, s2 = Settlement.objects.get(trade=market["first"]), Settlement.objects.get(trade=market["second"])
    # 4 x (1M + 2 x 1M) + 1M = 13M billable, 10M to the older contract, 3M to the newer.
    assert (s1.delivered_tokens, s2.delivered_tokens, s2.overage_tokens) == (10_000_000, 3_000_000, 0)
    assert_invariants()


def test_crossing_orders_not_yet_matched_are_not_an_idle_book(
    market, _matching_queue, django_capture_on_commit_callbacks
):
    fwd = market["fwd"]
    with django_capture_on_commit_callbacks(execute=True):
        factories.place(market["provider"], fwd, "sell", 1, "0.90")
    assert fwd.pk in _matching_queue  # enqueued, not run: the book is busy, not crossed
    assert_invariants()


@breaks
def test_two_unbalanced_transactions_that_cancel_out_are_caught(market):
    provider_available = ledger_id(market["provider"], "available")
    with guards_off():
        append_entries("broken:1", [(provider_available, D("5.00"))])
        append_entries("broken:2", [(provider_available, D("-5.00"))])
    total = sum(LedgerEntry.objects.values_list("amount", flat=True), D("0"))
    assert total == 0  # globally the ledger still sums to zero
    with pytest.raises(AssertionError, match=r"ledger transaction \d+ does not sum to zero"):
        assert_invariants()


@breaks
def test_a_wrong_balance_after_on_a_statement_line_is_caught(market):
    entry = LedgerEntry.objects.filter(account_id=ledger_id(market["buyer"], "available")).order_by("id")[1]
    with guards_off():
        LedgerEntry.objects.filter(pk=entry.pk).update(balance_after=F("balance_after") + D("0.01"))
    with pytest.raises(AssertionError, match=rf"entry {entry.pk} .*balance_after .* running sum"):
        assert_invariants()


@breaks
def test_a_balance_that_is_not_the_sum_of_its_entries_is_caught(market):
    LedgerAccount.objects.filter(pk=ledger_id(market["provider"], "available")).update(balance=F("balance") + 1)
    with pytest.raises(AssertionError, match="balance .* != sum of its entries"):
        assert_invariants()


@breaks
def test_a_reservation_that_leaves_out_the_fee_is_caught(market):
    """The live buy's escrow holds its value at the limit without the fee part."""
    buy, buyer = market["live_buy"], market["buyer"]
    # 4 Mtok at 1.00 + 10 bps = 4.004 -> 4.01 reserved; the fee part is 0.01.
    assert order_reservation(quantity=buy.quantity, filled=0, price=buy.price, max_fee_bps=10) == D("4.01")
    ledger_post(
        key="broken:fee-less",
        kind="escrow_release",
        legs=[(ledger_id(buyer, "escrow"), D("-0.01")), (ledger_id(buyer, "available"), D("0.01"))],
    )
    with pytest.raises(AssertionError, match=rf"escrow of account {buyer.pk} is .* open commitments"):
        assert_invariants()


@breaks
def test_escrow_that_does_not_match_the_commitments_is_caught(market):
    buyer = market["buyer"]
    ledger_post(
        key="broken:escrow",
        kind="escrow_release",
        legs=[(ledger_id(buyer, "escrow"), D("-0.01")), (ledger_id(buyer, "available"), D("0.01"))],
    )
    with pytest.raises(AssertionError, match=rf"escrow of account {buyer.pk}"):
        assert_invariants()


@breaks
def test_a_wrong_stored_contract_escrow_is_caught(market):
    t = market["open_contract"]
    Trade.objects.filter(pk=t.pk).update(buyer_escrow=F("buyer_escrow") - D("0.01"))
    with pytest.raises(AssertionError, match=rf"trade {t.pk} says it holds .* in escrow"):
        assert_invariants()


@breaks
def test_wrong_stored_billable_tokens_are_caught(market):
    e = UsageEvent.objects.get(event_id="e0")
    UsageEvent.objects.filter(pk=e.pk).update(billable_tokens=F("billable_tokens") * 2)
    with pytest.raises(AssertionError, match=rf"usage event {e.pk}: billable_tokens .* raw counts"):
        assert_invariants()


@breaks
def test_a_usage_event_counted_in_two_settlements_is_caught(market):
    """The newer contract also counts 3M tokens the older one already delivered."""
    second = market["second"]
    Settlement.objects.filter(trade=second).update(delivered_tokens=6_000_000, unused_tokens=4_000_000)
    with pytest.raises(AssertionError, match=rf"settlement of trade {second.pk}: delivered.*oldest first"):
        assert_invariants()


@breaks
def test_a_usage_event_added_after_its_pair_settled_is_caught(market):
    """An event no settlement counted: the pair's settlements no longer account for its usage."""
    e = UsageEvent.objects.get(event_id="e0")
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                provider=e.provider, buyer=e.buyer, instrument=e.instrument, event_id="late", occurred_at=e.occurred_at,
                input_tokens=8_000_000, output_tokens=0, billable_tokens=8_000_000, payload_hash="x",
            )
        ]
    )  # fmt: skip
    with pytest.raises(AssertionError, match="usage allocated oldest first|its usage events"):
        assert_invariants()


@breaks
def test_settlement_money_off_the_rules_is_caught(market):
    first = market["first"]
    Settlement.objects.filter(trade=first).update(
        seller_fee=F("seller_fee") + 1, provider_payout=F("provider_payout") - 1
    )
    with pytest.raises(AssertionError, match=rf"settlement of trade {first.pk}: value/fees"):
        assert_invariants()


@breaks
def test_filled_that_is_not_the_sum_of_trades_is_caught(market):
    buy = market["open_contract"].buy_order
    lot = market["fwd"].lot_size
    Order.objects.filter(pk=buy.pk).update(filled_quantity=F("filled_quantity") - lot, status="partially_filled")
    with pytest.raises(AssertionError, match=rf"order {buy.pk}: filled .* its trades sum to"):
        assert_invariants()


@breaks
def test_filled_above_quantity_is_caught(market):
    buy = market["live_buy"]
    with guards_off(("marketplace_order", "order_filled_le_quantity")):
        Order.objects.filter(pk=buy.pk).update(filled_quantity=F("quantity") + 1)
    with pytest.raises(AssertionError, match=rf"order {buy.pk}: filled \d+ > quantity"):
        assert_invariants()


@breaks
def test_a_trade_outside_a_limit_is_caught(market):
    t = market["open_contract"]
    Trade.objects.filter(pk=t.pk).update(price=t.price + D("0.01"))
    with pytest.raises(AssertionError, match=rf"trade {t.pk} at .* outside the limits"):
        assert_invariants()


@breaks
def test_a_trade_on_hardware_the_buyer_does_not_accept_is_caught(market):
    t = market["open_contract"]
    other = Hardware.objects.exclude(pk=t.hardware_id).first()
    Order.objects.filter(pk=t.buy_order_id).update(allowed_hardware_ids=[other.pk])
    with pytest.raises(AssertionError, match=rf"trade {t.pk} breaks the hardware rule"):
        assert_invariants()


@breaks
def test_a_trade_on_other_hardware_than_its_sell_is_caught(market):
    t = market["open_contract"]
    other = Hardware.objects.exclude(pk=t.hardware_id).first()
    Trade.objects.filter(pk=t.pk).update(hardware=other)
    with pytest.raises(AssertionError, match=rf"trade {t.pk} is not on its sell order's hardware"):
        assert_invariants()


@breaks
def test_a_self_trade_is_caught(market):
    """Both orders of one account: the trade's own buyer/seller columns are not trusted."""
    t = market["open_contract"]
    Order.objects.filter(pk=t.sell_order_id).update(account=market["buyer"])
    with pytest.raises(AssertionError, match=rf"trade {t.pk} is a self-trade"):
        assert_invariants()


@breaks
def test_a_self_trade_past_the_check_constraint_is_caught(market):
    t = market["open_contract"]
    with guards_off(("marketplace_trade", "trade_no_self_trade")):
        Order.objects.filter(pk=t.sell_order_id).update(account=market["buyer"])
        Trade.objects.filter(pk=t.pk).update(seller=market["buyer"])
    with pytest.raises(AssertionError, match=rf"trade {t.pk} is a self-trade"):
        assert_invariants()


@breaks
def test_a_crossed_idle_book_is_caught(market):
    fwd, buy = market["fwd"], market["live_buy"]
    sell = market["resting_sell"]
    # A resting ask under the resting bid, as if the matcher had processed it and not traded.
    Order.objects.filter(pk=sell.pk).update(price=D("0.99"))
    assert not Order.objects.filter(instrument=fwd, pending_match=True).exists()
    with pytest.raises(AssertionError, match=rf"idle book of instrument {fwd.pk} is crossed: buy {buy.pk}"):
        assert_invariants()


def test_a_resting_bid_over_an_ask_on_hardware_it_refuses_is_not_crossed(market):
    h200 = Hardware.objects.get(code="h200")  # the resting sell is on h100
    Order.objects.filter(pk=market["live_buy"].pk).update(allowed_hardware_ids=[h200.pk])
    Order.objects.filter(pk=market["resting_sell"].pk).update(price=D("0.99"))  # h100
    assert_invariants()


@breaks
def test_a_negative_participant_balance_is_caught(market):
    provider_available = ledger_id(market["provider"], "available")
    balance = LedgerAccount.objects.get(pk=provider_available).balance
    with guards_off(("metering_ledgeraccount", "ledger_no_negative_balance")):
        append_entries(
            "broken:overdraft",
            [(provider_available, -balance - D("1.00")), (system_account("deposits").pk, balance + D("1.00"))],
        )
    with pytest.raises(AssertionError, match=r"available.* is negative"):
        assert_invariants()


@breaks
def test_a_trade_fee_rate_that_is_not_its_orders_frozen_rate_is_caught(market):
    t = market["open_contract"]
    Order.objects.filter(pk=t.buy_order_id).update(taker_fee_bps=11)  # the buy took: taker
    with pytest.raises(AssertionError, match=rf"trade {t.pk}: fees .* break the maker/taker rule"):
        assert_invariants()


@breaks
def test_trade_tier_terms_that_are_not_its_resting_orders_are_caught(market):
    t = market["open_contract"]
    Trade.objects.filter(pk=t.pk).update(unused_capacity_share=D("1"))
    with pytest.raises(AssertionError, match=rf"trade {t.pk}: its tier terms"):
        assert_invariants()


@breaks
def test_a_settlement_fee_off_the_running_total_is_caught(market):
    s = Settlement.objects.get(trade=market["second"])
    with guards_off(("metering_settlement", "settlement_payout_is_value_less_fee")):
        Settlement.objects.filter(pk=s.pk).update(
            seller_fee=F("seller_fee") + D("0.01"), provider_payout=F("provider_payout") - D("0.01")
        )
    with pytest.raises(AssertionError, match=rf"settlement of trade {market['second'].pk}: value/fees"):
        assert_invariants()


def test_order_reservation_is_the_documented_rule():
    """200 Mtok at 1.50 reserves 300.00 + 0.30 = 300.30, rounded up once (README worked
    example); 100 Mtok at 0.30 reserves 30.03; once 5 Mtok of 8 at 1.50 filled the order holds
    12.02 - ceil(7.5075) = 4.51 (README "Escrow")."""
    assert order_reservation(quantity=200_000_000, filled=0, price=D("1.50"), max_fee_bps=10) == D("300.30")
    assert order_reservation(quantity=100_000_000, filled=0, price=D("0.30"), max_fee_bps=10) == D("30.03")
    assert order_reservation(quantity=8_000_000, filled=5_000_000, price=D("1.50"), max_fee_bps=10) == D("4.51")
    assert order_reservation(quantity=8_000_000, filled=8_000_000, price=D("1.50"), max_fee_bps=10) == D("0.00")


@breaks
def test_a_wrong_stored_escrow_on_a_settled_contract_is_caught(market):
    t = market["first"]
    Trade.objects.filter(pk=t.pk).update(buyer_escrow=F("buyer_escrow") + D("0.01"))
    with pytest.raises(AssertionError, match=rf"trade {t.pk} says it holds .* in escrow"):
        assert_invariants()


@breaks
def test_a_withdrawal_hold_that_is_not_the_pending_withdrawals_is_caught(market):
    """The request stays pending while its hold goes back to available behind its back."""
    buyer = market["buyer"]
    request = funding_withdrawal_request(account=buyer, amount="10.00")
    hold = LedgerAccount.objects.get(owner=buyer, kind="withdrawal_hold")
    ledger_post(
        key="broken:hold",
        kind="withdrawal_release",
        legs=[(hold.pk, D("-10.00")), (ledger_id(buyer, "available"), D("10.00"))],
    )
    assert request.status == "pending"
    with pytest.raises(
        AssertionError, match=rf"withdrawal hold of account {buyer.pk} is 0.00, pending withdrawals are 10.00"
    ):
        assert_invariants()


def test_a_pending_withdrawal_with_its_hold_passes(market):
    funding_withdrawal_request(account=market["buyer"], amount="10.00")
    assert_invariants()
