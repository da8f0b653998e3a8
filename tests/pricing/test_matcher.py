"""The database-backed matcher (pricing.services) through the marketplace services.

Runs on SQLite by default and on PostgreSQL with DATABASE_URL (the bulk order update has a
PostgreSQL-only path). Each scenario checks rows and balances, then every invariant.

Money in the worked examples (lot = 1M tokens, maker fee 5 bps, taker fee 10 bps):
- a buy reserves per lot: limit value + the highest fee, each rounded up to the cent:
  at 1.50 that is 1.50 + 0.01 = 1.51;
- a contract keeps in escrow: value + the buyer's fee, rounded up: 5 lots at 1.20 bought by the
  taker = 6.00 + ceil(0.006) = 6.01.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest
from django.db import connection

from marketplace import services as market
from marketplace.models import Instrument, Order, OrderStatus, Trade
from marketplace.services import ServiceError
from metering.selectors import balances_get
from pricing import tasks
from pricing.replay import instrument_replay, instrument_trades
from pricing.services import instrument_match
from tests import factories
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db

D = Decimal
FUNDS = D("100000.00")


def place(account, inst, side, lots, price, **kw):
    return factories.place(account, inst, side, lots, price, **kw)


def match(inst):
    return instrument_match(instrument_id=inst.pk)


def reload(*orders):
    for o in orders:
        o.refresh_from_db()
    return orders


def trades_of(inst):
    return [
        (t.buy_order_id, t.sell_order_id, t.price, t.quantity // inst.lot_size, t.hardware.code)
        for t in Trade.objects.filter(instrument=inst).select_related("hardware").order_by("match_sequence")
    ]


def assert_replay_equal(inst):
    assert instrument_replay(instrument_id=inst.pk) == instrument_trades(instrument_id=inst.pk)


@pytest.fixture
def both(db):
    """An account that buys and sells (for self-trade prevention)."""
    acct = factories.AccountFactory(is_buyer=True, is_provider=True)
    factories.fund(acct, FUNDS)
    return acct


@pytest.fixture
def provider2(db):
    return factories.AccountFactory(is_buyer=False, is_provider=True)


# --- time in force ----------------------------------------------------------------------


def test_gtc_buy_fills_at_the_resting_price_rests_its_remainder_and_releases_price_improvement(
    buyer, provider, instrument
):
    sell = place(provider, instrument, "sell", 5, "1.20")
    buy = place(buyer, instrument, "buy", 8, "1.50")
    # 8 Mtok x 1.50 = 12.00, + 10 bps = 12.012, rounded up once: 12.02.
    assert balances_get(account=buyer)["escrow"] == D("12.02")

    report = match(instrument)

    assert (report.processed, report.trades, report.batches) == (2, 1, 1)
    assert trades_of(instrument) == [(buy.pk, sell.pk, D("1.20"), 5, "h100")]
    t = Trade.objects.get()
    assert (t.aggressor_side, t.buyer_fee_bps, t.seller_fee_bps, t.buyer_escrow) == ("buy", 10, 5, D("6.01"))
    reload(sell, buy)
    assert (sell.status, sell.filled_quantity, sell.pending_match) == (OrderStatus.FILLED, 5_000_000, False)
    assert (buy.status, buy.filled_quantity, buy.pending_match) == (OrderStatus.PARTIALLY_FILLED, 5_000_000, False)
    # Escrow: the order holds 12.02 - ceil(7.5075) = 4.51 for its 3 open Mtok, the contract
    # ceil(6.006) = 6.01; the fill took 7.51, so 1.50 of price improvement came back.
    b = balances_get(account=buyer)
    assert b["escrow"] == D("4.51") + D("6.01") == D("10.52")
    assert b["available"] == FUNDS - D("10.52")
    book = instrument.book
    book.refresh_from_db()
    assert (book.best_bid, book.best_ask, book.last_price) == (D("1.50"), None, D("1.20"))
    assert book.last_matched_sequence == buy.sequence
    assert_replay_equal(instrument)
    assert_invariants()


def test_a_resting_buy_hit_by_a_sell_trades_at_the_bid_with_the_maker_fee(buyer, provider, instrument):
    buy = place(buyer, instrument, "buy", 4, "1.50")
    match(instrument)
    sell = place(provider, instrument, "sell", 4, "1.00")
    match(instrument)
    t = Trade.objects.get()
    assert (t.buy_order_id, t.sell_order_id, t.price, t.aggressor_side) == (buy.pk, sell.pk, D("1.50"), "sell")
    assert (t.buyer_fee_bps, t.seller_fee_bps) == (5, 10)
    # 4 lots at 1.50 = 6.00 + maker fee ceil(0.003) = 6.01; the reservation was 4 x 1.51 = 6.04.
    assert t.buyer_escrow == D("6.01")
    assert balances_get(account=buyer)["escrow"] == D("6.01")
    reload(buy, sell)
    assert buy.status == sell.status == OrderStatus.FILLED
    assert_invariants()


def test_ioc_remainder_is_cancelled_and_its_escrow_released(buyer, provider, instrument):
    sell = place(provider, instrument, "sell", 5, "1.20")
    buy = place(buyer, instrument, "buy", 8, "1.50", time_in_force="ioc")
    match(instrument)
    reload(buy, sell)
    assert (buy.status, buy.status_reason, buy.filled_quantity) == (OrderStatus.CANCELLED, "ioc_remainder", 5_000_000)
    assert sell.status == OrderStatus.FILLED
    assert balances_get(account=buyer)["escrow"] == D("6.01")
    assert balances_get(account=buyer)["available"] == FUNDS - D("6.01")
    assert_invariants()


def test_ioc_that_meets_nothing_is_cancelled_in_full(buyer, instrument):
    buy = place(buyer, instrument, "buy", 2, "1.50", time_in_force="ioc")
    match(instrument)
    reload(buy)
    assert (buy.status, buy.filled_quantity) == (OrderStatus.CANCELLED, 0)
    assert balances_get(account=buyer) == {"available": FUNDS, "escrow": D("0.00"), "owed": D("0.00")}
    assert_invariants()


def test_fok_fills_completely_or_not_at_all(buyer, provider, instrument):
    s1 = place(provider, instrument, "sell", 3, "1.10")
    s2 = place(provider, instrument, "sell", 3, "1.20")
    too_big = place(buyer, instrument, "buy", 7, "1.20", time_in_force="fok")
    fits = place(buyer, instrument, "buy", 4, "1.20", time_in_force="fok")
    match(instrument)
    reload(s1, s2, too_big, fits)
    assert (too_big.status, too_big.status_reason, too_big.filled_quantity) == (
        OrderStatus.CANCELLED,
        "fok_not_fillable",
        0,
    )
    assert (fits.status, fits.filled_quantity) == (OrderStatus.FILLED, 4_000_000)
    assert trades_of(instrument) == [(fits.pk, s1.pk, D("1.10"), 3, "h100"), (fits.pk, s2.pk, D("1.20"), 1, "h100")]
    assert (s2.status, s2.remaining) == (OrderStatus.PARTIALLY_FILLED, 2_000_000)
    # fits reserved ceil(4.80 x 1.001) = 4.81. 3 @ 1.10: the fill takes 4.81 - (4.81 - ceil(3.6036))
    # = 3.61, the contract keeps ceil(3.3033) = 3.31, 0.30 back; 1 @ 1.20: the last 1.20 (a cent
    # below ceil(1.2012), what rounding once left). Nothing else stays reserved.
    assert balances_get(account=buyer)["escrow"] == D("3.31") + D("1.20")
    assert_replay_equal(instrument)
    assert_invariants()


def test_post_only_rests_when_it_would_not_cross_and_is_rejected_when_it_would(buyer, provider, instrument):
    place(provider, instrument, "sell", 2, "1.20")
    rests = place(buyer, instrument, "buy", 2, "1.19", time_in_force="post_only")
    crosses = place(buyer, instrument, "buy", 2, "1.20", time_in_force="post_only")
    match(instrument)
    reload(rests, crosses)
    assert (rests.status, rests.pending_match) == (OrderStatus.OPEN, False)
    assert (crosses.status, crosses.status_reason) == (OrderStatus.REJECTED, "post_only_would_cross")
    assert not Trade.objects.exists()
    assert balances_get(account=buyer)["escrow"] == D("2.39")  # ceil(2.38 x 1.001), one order
    assert_invariants()


# --- self-trade prevention, hardware ------------------------------------------------------


def test_self_trade_prevention_cancels_the_incoming_order_and_keeps_the_resting_one(both, instrument):
    sell = place(both, instrument, "sell", 5, "1.00")
    buy = place(both, instrument, "buy", 3, "1.10")
    match(instrument)
    reload(sell, buy)
    assert (buy.status, buy.status_reason, buy.filled_quantity) == (OrderStatus.CANCELLED, "self_trade_prevented", 0)
    assert (sell.status, sell.filled_quantity) == (OrderStatus.OPEN, 0)
    assert not Trade.objects.exists()
    assert balances_get(account=both) == {"available": FUNDS, "escrow": D("0.00"), "owed": D("0.00")}
    assert_invariants()


def test_self_trade_prevention_after_a_partial_fill_keeps_the_fill(both, provider, instrument):
    other = place(provider, instrument, "sell", 2, "0.90")
    own = place(both, instrument, "sell", 5, "1.00")
    buy = place(both, instrument, "buy", 4, "1.10")
    match(instrument)
    reload(other, own, buy)
    assert trades_of(instrument) == [(buy.pk, other.pk, D("0.90"), 2, "h100")]
    assert (buy.status, buy.status_reason, buy.filled_quantity) == (
        OrderStatus.CANCELLED,
        "self_trade_prevented",
        2_000_000,
    )
    assert own.status == OrderStatus.OPEN and other.status == OrderStatus.FILLED
    # Only the contract stays in escrow: 2 lots at 0.90 = 1.80 + ceil(0.0018) = 1.81.
    assert balances_get(account=both)["escrow"] == D("1.81")
    assert_replay_equal(instrument)
    assert_invariants()


def test_a_buy_only_matches_the_hardware_it_allows(buyer, provider, provider2, instrument):
    cheap_h100 = place(provider, instrument, "sell", 5, "1.00", hardware="h100")
    h200 = place(provider2, instrument, "sell", 5, "1.10", hardware="h200")
    buy = place(buyer, instrument, "buy", 8, "1.20", allowed_hardware=["h200"])
    match(instrument)
    reload(cheap_h100, h200, buy)
    assert trades_of(instrument) == [(buy.pk, h200.pk, D("1.10"), 5, "h200")]
    assert cheap_h100.status == OrderStatus.OPEN
    assert (buy.status, buy.remaining) == (OrderStatus.PARTIALLY_FILLED, 3_000_000)
    # The book's top is "crossed" (1.20 bid, 1.00 ask) though nothing there can trade.
    book = instrument.book
    book.refresh_from_db()
    assert (book.best_bid, book.best_ask) == (D("1.20"), D("1.00"))
    assert_invariants()


# --- cancel, expiry, halt ---------------------------------------------------------------


def test_a_cancel_is_a_command_the_matcher_applies_in_sequence_before_the_orders_of_its_batch(
    buyer, provider, instrument
):
    sell = place(provider, instrument, "sell", 5, "1.20")
    match(instrument)
    version = instrument.book.version
    market.order_cancel_request(account=provider, order_id=sell.pk)
    buy = place(buyer, instrument, "buy", 5, "1.30")
    sell.refresh_from_db()
    assert sell.status == OrderStatus.OPEN and sell.cancel_requested_at is not None  # only recorded

    report = match(instrument)

    reload(sell, buy)
    assert report.processed == 2 and Trade.objects.count() == 0
    assert (sell.status, sell.status_reason) == (OrderStatus.CANCELLED, "cancelled_by_user")
    # The cancel took the next number, then the buy: one sequence for both kinds of command.
    assert (sell.sequence, sell.cancel_sequence, buy.sequence) == (1, 2, 3)
    book = instrument.book
    book.refresh_from_db()
    assert (book.last_matched_sequence, book.version, book.best_ask, book.best_bid) == (3, version, None, D("1.30"))
    assert_replay_equal(instrument)
    assert_invariants()


def test_a_fill_that_got_there_first_makes_the_cancel_refused_with_the_final_state(buyer, provider, instrument):
    sell = place(provider, instrument, "sell", 5, "1.20")
    place(buyer, instrument, "buy", 5, "1.30")
    match(instrument)
    with pytest.raises(ServiceError) as err:
        market.order_cancel(account=provider, order_id=sell.pk)
    assert err.value.code == "order_not_cancellable" and err.value.status == 409
    sell.refresh_from_db()
    assert sell.status == OrderStatus.FILLED and sell.cancel_requested_at is None and Trade.objects.count() == 1
    assert_replay_equal(instrument)
    assert_invariants()


def test_a_cancel_nobody_applies_in_time_is_applied_by_the_request_itself_in_sequence(buyer, provider, instrument):
    buy = place(buyer, instrument, "buy", 6, "1.50")
    place(provider, instrument, "sell", 2, "1.40")
    match(instrument)  # 2 lots trade; the buy rests with 4
    version = instrument.book.version
    late = place(provider, instrument, "sell", 1, "1.40")  # pending: no worker runs here

    # No matcher runs in this test, so the request applies its own command (wait 0 here).
    cancelled = market.order_cancel(account=buyer, order_id=buy.pk)

    buy.refresh_from_db()
    assert cancelled.status == buy.status == OrderStatus.CANCELLED
    assert (buy.filled_quantity, buy.cancel_sequence) == (2_000_000, buy.sequence + 2)
    book = instrument.book
    book.refresh_from_db()
    # Applied outside the matcher: the version moved, so resident books reload.
    assert book.version == version + 1 and book.last_matched_sequence == buy.cancel_sequence
    # Buy rested first, so it is the maker: 2 lots at 1.50 = 3.00 + ceil(0.0015) = 3.01.
    assert balances_get(account=buyer)["escrow"] == D("3.01")
    # The pending sell was not drained by the cancel (bounded work) and must not meet the buy.
    late.refresh_from_db()
    assert late.pending_match
    match(instrument)
    assert Trade.objects.count() == 1
    assert_replay_equal(instrument)
    assert_invariants()


def test_cancel_of_an_order_the_matcher_has_not_reached_keeps_it_out_of_replay(buyer, provider, instrument):
    sell = place(provider, instrument, "sell", 5, "1.20")
    match(instrument)
    buy = place(buyer, instrument, "buy", 5, "1.30")
    market.instrument_set_status(instrument=instrument, status=Instrument.Status.HALTED)
    market.order_cancel(account=buyer, order_id=buy.pk)  # halted: it never reaches the engine
    buy.refresh_from_db()
    assert buy.status == OrderStatus.CANCELLED and buy.cancel_sequence == buy.sequence
    market.instrument_set_status(instrument=instrument, status=Instrument.Status.OPEN)
    later = place(buyer, instrument, "buy", 1, "1.25")
    match(instrument)
    assert trades_of(instrument) == [(later.pk, sell.pk, D("1.20"), 1, "h100")]
    assert_replay_equal(instrument)
    assert balances_get(account=buyer)["escrow"] == D("1.21")
    assert_invariants()


def test_the_matcher_applies_cancels_while_an_instrument_is_halted(buyer, provider, instrument):
    buy = place(buyer, instrument, "buy", 5, "1.30")
    match(instrument)
    # Accepted before the halt, still waiting for the matcher when the halt comes (a halted
    # instrument takes no new orders: placement refuses them in its INSERT).
    pending = place(provider, instrument, "sell", 5, "1.20")
    market.instrument_set_status(instrument=instrument, status=Instrument.Status.HALTED)
    market.order_cancel_request(account=buyer, order_id=buy.pk)
    assert match(instrument).processed == 1
    reload(buy, pending)
    assert buy.status == OrderStatus.CANCELLED and pending.pending_match  # new orders wait
    assert balances_get(account=buyer)["escrow"] == D("0.00")
    assert_invariants()


def test_gtc_orders_expire_when_the_delivery_period_ends(buyer, provider, instrument):
    buy = place(buyer, instrument, "buy", 5, "1.00")
    sell = place(provider, instrument, "sell", 5, "1.20")
    match(instrument)
    reload(buy, sell)
    assert buy.status == sell.status == OrderStatus.OPEN

    report = market.instruments_roll(now=instrument.delivery_end + dt.timedelta(minutes=1), days_ahead=0)

    assert report.closed >= 1 and report.expired_orders >= 2
    instrument.refresh_from_db()
    reload(buy, sell)
    assert instrument.status == Instrument.Status.CLOSED
    assert (buy.status, buy.status_reason) == (OrderStatus.EXPIRED, "delivery_period_ended")
    assert sell.status == OrderStatus.EXPIRED
    assert balances_get(account=buyer) == {"available": FUNDS, "escrow": D("0.00"), "owed": D("0.00")}
    assert_invariants()


def test_the_sweep_expires_what_is_left_on_an_instrument_whose_period_has_ended(buyer, provider, catalog, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.match_instrument, "delay", sent.append)
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    past = factories.open_instrument(day=yesterday)
    during = past.delivery_start + dt.timedelta(hours=1)
    rested = place(buyer, past, "buy", 2, "1.00", now=during)
    # The matcher does not touch an instrument whose period is over; the order stays pending.
    assert match(past).processed == 0
    rested.refresh_from_db()
    assert rested.pending_match

    result = tasks.sweep()

    assert result["closed"] == 1
    past.refresh_from_db()
    rested.refresh_from_db()
    assert past.status == Instrument.Status.CLOSED
    assert (rested.status, rested.pending_match) == (OrderStatus.EXPIRED, False)
    assert balances_get(account=buyer)["escrow"] == D("0.00")
    assert past.pk not in sent
    assert_invariants()


def test_a_halted_instrument_does_not_match_until_resumed(
    buyer, provider, instrument, _matching_queue, django_capture_on_commit_callbacks
):
    sell = place(provider, instrument, "sell", 5, "1.20")
    buy = place(buyer, instrument, "buy", 5, "1.30")
    market.instrument_set_status(instrument=instrument, status=Instrument.Status.HALTED)
    assert match(instrument).processed == 0
    reload(sell, buy)
    assert sell.pending_match and buy.pending_match and not Trade.objects.exists()

    # Resuming queues matching of what waited (after commit).
    with django_capture_on_commit_callbacks(execute=True):
        market.instrument_set_status(instrument=instrument, status=Instrument.Status.OPEN)
    assert instrument.pk in _matching_queue
    match(instrument)
    reload(sell, buy)
    assert sell.status == buy.status == OrderStatus.FILLED
    assert_invariants()


# --- batching, determinism, replay ---------------------------------------------------------


def random_stream(rng: random.Random, n: int) -> list[dict]:
    ops = []
    for _ in range(n):
        if rng.random() < 0.1:
            ops.append({"kind": "cancel", "pick": rng.randrange(1000)})
            continue
        side = rng.choice(["buy", "sell"])
        op = {
            "kind": "order",
            "who": rng.randrange(4),
            "side": side,
            "lots": rng.randint(1, 5),
            "price": str(D("1.00") + D("0.01") * rng.randint(0, 6)),
            "time_in_force": rng.choice(["gtc", "gtc", "ioc", "fok", "post_only"]),
        }
        if side == "sell":
            op["hardware"] = rng.choice(["h100", "h200", "b200"])
        else:
            op["allowed_hardware"] = rng.sample(["h100", "h200", "b200"], rng.randint(0, 2))
        ops.append(op)
    return ops


def run_stream(inst, accounts, ops, *, match_every: int) -> list[Order]:
    """Place the stream, matching every `match_every` orders. A cancel names an earlier order
    by position and arrives once the matcher has caught up (as it has when a client sees its
    order's state), so the matcher applies it right after the orders placed before it whatever
    the batching; it is refused if that order is done by then."""
    placed = []
    for i, op in enumerate(ops):
        if op["kind"] == "cancel":
            if placed:
                victim = placed[op["pick"] % len(placed)]
                match(inst)
                try:
                    market.order_cancel_request(account=victim.account, order_id=victim.pk)
                except ServiceError as exc:
                    assert exc.code == "order_not_cancellable"
            continue
        kw = {k: op[k] for k in ("time_in_force", "hardware", "allowed_hardware") if k in op}
        placed.append(place(accounts[op["who"]], inst, op["side"], op["lots"], op["price"], **kw))
        if (i + 1) % match_every == 0:
            match(inst)
    match(inst)
    return placed


def by_sequence(inst):
    seq = dict(Order.objects.filter(instrument=inst).values_list("id", "sequence"))
    return [(seq[b], seq[s], p, q, hw) for b, s, p, q, hw in trades_of(inst)]


@pytest.mark.parametrize("seed", [1, 2])
def test_small_batches_give_the_same_trades_as_one_batch(catalog, settings, seed):
    accounts = []
    for _ in range(4):
        acct = factories.AccountFactory(is_buyer=True, is_provider=True)
        factories.fund(acct, FUNDS)
        accounts.append(acct)
    ops = random_stream(random.Random(seed), 60)
    one = factories.open_instrument(tier="standard", region="cn-west-1")
    small = factories.open_instrument(tier="standard", region="cn-east-1")
    eager = factories.open_instrument(tier="economy", region="cn-west-1")

    settings.MATCH_BATCH_SIZE = 1000
    run_stream(one, accounts, ops, match_every=10_000)  # all at once, one batch
    settings.MATCH_BATCH_SIZE = 3
    run_stream(small, accounts, ops, match_every=10_000)  # all at once, batches of 3
    run_stream(eager, accounts, ops, match_every=1)  # after every order

    assert by_sequence(one), "the stream should trade"
    assert by_sequence(small) == by_sequence(one) == by_sequence(eager)
    for inst in (one, small, eager):
        assert_replay_equal(inst)
        assert not Order.objects.filter(instrument=inst, pending_match=True).exists()
    assert_invariants()


def test_instrument_match_stops_after_max_batches_and_says_more_is_pending(buyer, provider, instrument, settings):
    settings.MATCH_BATCH_SIZE = 2
    for _ in range(5):
        place(provider, instrument, "sell", 1, "1.20")
    report = instrument_match(instrument_id=instrument.pk, max_batches=2)
    assert (report.processed, report.batches, report.more_pending) == (4, 2, True)
    report = instrument_match(instrument_id=instrument.pk, max_batches=2)
    assert (report.processed, report.more_pending) == (1, False)
    assert_invariants()


# --- query count -------------------------------------------------------------------------


def _one_batch_scenario(n_orders: int, buyers, providers, inst):
    """A resting book and `n_orders` pending crossing orders from a fixed set of accounts."""
    for i in range(n_orders):
        if i % 2:
            place(providers[i % len(providers)], inst, "sell", 1 + i % 3, str(D("1.00") + D("0.01") * (i % 5)))
        else:
            place(buyers[i % len(buyers)], inst, "buy", 1 + i % 3, str(D("1.02") + D("0.01") * (i % 5)))


@pytest.mark.parametrize("n_orders", [6, 60, pytest.param(300, marks=pytest.mark.postgres)])
def test_one_matching_batch_takes_a_fixed_number_of_queries(catalog, settings, n_orders, django_assert_max_num_queries):
    settings.MATCH_BATCH_SIZE = 10_000
    buyers = []
    for _ in range(3):
        acct = factories.AccountFactory(is_buyer=True)
        factories.fund(acct, FUNDS)
        buyers.append(acct)
    providers = [factories.AccountFactory(is_buyer=False, is_provider=True) for _ in range(3)]
    inst = factories.open_instrument()
    # Rest some orders first so the batch loads a book, then queue the batch.
    _one_batch_scenario(10, buyers, providers, inst)
    match(inst)
    _one_batch_scenario(n_orders, buyers, providers, inst)
    # One transaction: lock, instrument, cancels, pending, hardware, resting book (not resident
    # here: pytest's transaction never commits), order update, trade insert, escrow release
    # (ledger accounts, transaction, entries, balances), book save. Top of book is in memory.
    with django_assert_max_num_queries(QUERY_BUDGET[connection.vendor]):
        report = instrument_match(instrument_id=inst.pk, max_batches=1)
    assert report.processed == n_orders and report.trades > 0
    assert_invariants()


# PostgreSQL posts the batch's escrow releases with one UPDATE ... FROM unnest(); SQLite updates
# each ledger balance on its own (2 per buyer account, 3 buyers here) and splits bulk writes
# into chunks of its bound-parameter limit, so only PostgreSQL is pinned for large batches.
QUERY_BUDGET = {"postgresql": 20, "sqlite": 25}
