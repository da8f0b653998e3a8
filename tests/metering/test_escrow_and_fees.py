"""Issue 12 items 3-4: exact escrow, and fees that do not vanish by fragmentation.

Escrow rule (README "Escrow"): a buy of q tokens at limit L with frozen fees (maker m, taker t)
reserves ceil_cent(q x L / 1M x (1 + max(m, t) / 10,000)); while live it holds that reservation
less the same rule applied to what has filled; each fill gives its contract min(what the fill
consumed, ceil(value + buyer fee)) and releases the rest at once.

Fee rule: an account's unrounded fees per instrument and role are rounded once on their running
total; each contract is charged the increase.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from fractions import Fraction

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from marketplace import services as market
from marketplace.models import Order, Trade
from metering import money
from metering.ledger import system_account
from metering.models import Settlement
from metering.selectors import balances_get
from metering.settlement import FeeBook, allocate, instrument_settle, settlement_amounts
from pricing.services import instrument_match
from tests import factories
from tests.invariants import assert_invariants, order_open_escrow

from .builders import D, after_grace

M = 1_000_000


def _ceil_cent(x: Fraction) -> Decimal:
    y = x * 100
    return Decimal(-(-y.numerator // y.denominator)) / 100


prices = st.integers(1, 100_000).map(lambda c: Decimal(c) / 100)  # 0.01 .. 1,000.00
bps = st.integers(0, 500)


# --- item 3: the reservation -----------------------------------------------------------------


def test_the_issues_examples_reserve_once_not_per_lot():
    assert money.reserve(quantity=100 * M, price=D("0.30"), max_fee_bps=10) == D("30.03")  # was 31.00
    assert money.reserve(quantity=100 * M, price=D("0.01"), max_fee_bps=10) == D("1.01")  # was 2.00


@given(lots=st.integers(1, 10_000), price=prices, fee=bps, lot=st.sampled_from([1, 1_000, 250_000, M]))
def test_reservation_is_quantity_times_limit_plus_the_highest_fee_rounded_up_once(lots, price, fee, lot):
    q = lots * lot
    exact = Fraction(q) * Fraction(price) / M * Fraction(10_000 + fee, 10_000)
    assert money.reserve(quantity=q, price=price, max_fee_bps=fee) == _ceil_cent(exact)


@st.composite
def fill_sequences(draw):
    lots = draw(st.integers(1, 60))
    limit = draw(prices)
    maker, taker = draw(bps), draw(bps)
    fills, left = [], lots
    while left and draw(st.booleans()):
        x = draw(st.integers(1, left))
        price = draw(st.integers(1, int(limit * 100)).map(lambda c: Decimal(c) / 100))
        fills.append((x * M, price, draw(st.sampled_from([maker, taker]))))
        left -= x
    return lots * M, limit, max(maker, taker), fills


@given(fill_sequences())
def test_fills_split_the_reservation_exactly_and_never_need_more(case):
    q, limit, fmax, fills = case
    reserved = money.reserve(quantity=q, price=limit, max_fee_bps=fmax)
    filled, moved = 0, Decimal(0)
    for x, price, fee in fills:
        split = money.fill_escrow(reserved=reserved, order_quantity=q, limit=limit, max_fee_bps=fmax,
                                  filled_before=filled, quantity=x, price=price, buyer_fee_bps=fee)  # fmt: skip
        assert split.contract >= 0 and split.release >= 0 and split.shortfall == 0
        assert split.contract <= money.contract_need(quantity=x, price=price, fee_bps=fee)
        filled += x
        moved += split.contract + split.release
        held = money.order_escrow_open(reserved=reserved, quantity=q, filled=filled, price=limit, max_fee_bps=fmax)
        # What the order still holds is a function of the order alone, and nothing is lost.
        assert held == (reserved - money.reserve(quantity=filled, price=limit, max_fee_bps=fmax) if filled < q else 0)
        assert moved + held == reserved


_days = itertools.count(800)


@pytest.mark.django_db
@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lots=st.integers(2, 30),
    limit_cents=st.integers(1, 400),
    steps=st.lists(st.tuples(st.integers(1, 8), st.integers(0, 50), st.booleans()), min_size=1, max_size=5),
    cancel=st.booleans(),
)
def test_escrow_equals_open_commitments_after_any_partial_fills_and_cancel(catalog, settings, lots, limit_cents, steps, cancel):
    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = 5, 10
    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, D("100000.00"))
    now = timezone.now()
    inst = factories.open_instrument(tier="standard", day=now.date() + dt.timedelta(days=next(_days)))
    limit = Decimal(limit_cents) / 100

    def sell(size, below):
        seller = factories.AccountFactory(is_buyer=False, is_provider=True)
        factories.place(seller, inst, "sell", size, str(max(limit - Decimal(below) / 100, D("0.01"))))

    # Sells marked "resting" are in the book before the buy arrives (the buy takes them, with
    # price improvement, as the taker); the others arrive later and hit the resting buy (maker).
    for size, below, resting in steps:
        if resting:
            sell(size, below)
    instrument_match(instrument_id=inst.pk)
    buy = factories.place(buyer, inst, "buy", lots, str(limit))
    assert buy.reserved == _ceil_cent(Fraction(lots * M) * Fraction(limit) / M * Fraction(10_010, 10_000))
    instrument_match(instrument_id=inst.pk)
    assert_invariants()
    for size, below, resting in steps:
        if not resting:
            sell(size, below)
            instrument_match(instrument_id=inst.pk)
            assert_invariants()
    buy.refresh_from_db()
    if cancel and buy.is_live:
        market.order_cancel(account=buyer, order_id=buy.pk)
    buy.refresh_from_db()
    contracts = sum((t.buyer_escrow for t in Trade.objects.filter(buy_order=buy)), Decimal(0))
    held = order_open_escrow(buy) if buy.is_live else Decimal(0)
    assert balances_get(account=buyer)["escrow"] == held + contracts
    assert_invariants()


# --- item 4: fees independent of fragmentation -------------------------------------------------


def _settle_pure(parts, *, price, share, delivered, buyer_bps, seller_bps, sellers=None):
    """Settle contracts of `parts` tokens each (oldest first) as one buyer's run; pure."""
    book = FeeBook()
    sellers = sellers or [2] * len(parts)
    done, _ = allocate(usage=delivered, quantities=parts)
    out = []
    for q, d, seller in zip(parts, done, sellers, strict=True):
        escrow = money.contract_need(quantity=q, price=price, fee_bps=buyer_bps)
        a = settlement_amounts(quantity=q, delivered=d, price=price, unused_share=share, buyer_fee_bps=buyer_bps,
                               seller_fee_bps=seller_bps, buyer_escrow=escrow, fees=book, buyer_id=1, seller_id=seller)  # fmt: skip
        assert a.value + a.buyer_fee + a.refund == escrow and a.refund >= 0
        assert a.provider_payout + a.seller_fee == a.value and a.provider_payout >= 0
        out.append(a)
    return out


@st.composite
def splits(draw):
    lots = draw(st.integers(1, 200))
    cuts = sorted(draw(st.sets(st.integers(1, lots - 1), max_size=min(lots - 1, 30)))) if lots > 1 else []
    bounds = [0, *cuts, lots]
    return lots, [(b - a) * M for a, b in itertools.pairwise(bounds)]


@given(
    split=splits(),
    price=st.integers(1, 2_000).map(lambda c: Decimal(c) / 100),
    share=st.sampled_from([D("0"), D("0.25"), D("0.3333"), D("1")]),
    delivered_share=st.fractions(0, 1),
    buyer_bps=bps,
    seller_bps=bps,
)
def test_the_same_trade_pays_the_same_fee_however_it_is_split(split, price, share, delivered_share, buyer_bps, seller_bps):
    lots, parts = split
    delivered = int(lots * M * delivered_share)
    kw = {"price": price, "share": share, "delivered": delivered, "buyer_bps": buyer_bps, "seller_bps": seller_bps}
    one = _settle_pure([lots * M], **kw)
    many = _settle_pure(parts, **kw)
    for field in ("buyer_fee", "seller_fee"):
        total_one = sum(getattr(a, field) for a in one)
        total_many = sum(getattr(a, field) for a in many)
        assert abs(total_one - total_many) <= D("0.01"), (field, total_one, total_many)


@given(split=splits(), price=st.integers(1, 2_000).map(lambda c: Decimal(c) / 100), buyer_bps=bps)
def test_a_buyer_sweeping_many_sellers_pays_its_fee_on_the_whole(split, price, buyer_bps):
    lots, parts = split
    assume(len(parts) > 1)
    kw = {"price": price, "share": D("1"), "delivered": 0, "buyer_bps": buyer_bps, "seller_bps": 0}
    one = _settle_pure([lots * M], **kw)
    many = _settle_pure(parts, sellers=list(range(10, 10 + len(parts))), **kw)
    assert abs(sum(a.buyer_fee for a in one) - sum(a.buyer_fee for a in many)) <= D("0.01")


@pytest.mark.django_db
@pytest.mark.parametrize("fills", [1, 10])
@pytest.mark.parametrize("sellers", ["one", "ten"])
def test_the_issues_example_10_mtok_at_2_00_pays_its_fee_as_one_fill_or_ten(catalog, settings, fills, sellers):
    """Fully delivered (batch tier, pay per use): 20.00 of value, taker 10 bps = 0.02 from the buyer
    however the buy fills; the seller's maker 5 bps = 0.01 when one provider sold all of it."""
    from metering.usage import usage_ingest

    from .builders import event, spot_instrument

    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = 5, 10
    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, D("100.00"))
    providers = [factories.AccountFactory(is_buyer=False, is_provider=True) for _ in range(10 if sellers == "ten" else 1)]
    inst = spot_instrument(tier="batch")
    for i in range(fills):
        factories.place(providers[i % len(providers)], inst, "sell", 10 // fills, "2.00")
    factories.place(buyer, inst, "buy", 10, "2.00")
    instrument_match(instrument_id=inst.pk)
    assert Trade.objects.filter(instrument=inst).count() == fills
    share = {}
    for t in Trade.objects.filter(instrument=inst):
        share[t.seller_id] = share.get(t.seller_id, 0) + t.quantity
    for p in providers:
        if p.pk in share:  # batch weights: output 2; deliver every contract in full
            usage_ingest(provider=p, events=[event(buyer, inst, prompt=0, completion=share[p.pk] // 2)])

    instrument_settle(instrument_id=inst.pk, now=after_grace(inst))

    rows = list(Settlement.objects.filter(trade__instrument=inst))
    assert sum(s.value for s in rows) == D("20.00")
    assert sum(s.buyer_fee for s in rows) == D("0.02")
    if sellers == "one":
        assert sum(s.seller_fee for s in rows) == D("0.01")
        assert system_account("fees").balance == D("0.03")
    assert balances_get(account=buyer) == {"available": D("79.98"), "escrow": D("0.00"), "owed": D("0.00")}
    assert_invariants()
    assert not Order.objects.filter(instrument=inst, status__in=["open", "partially_filled"]).exists()


_frag_days = itertools.count(1200)


def _run_fragmented(*, pieces: list[int], price: str, tier: str, delivered: int, sellers: int, chunk: int):
    """A buy of sum(pieces) lots takes `pieces` resting sells; deliver, settle; return the rows."""
    from metering.usage import usage_ingest

    from .builders import event

    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, D("1000000.00"))
    providers = [factories.AccountFactory(is_buyer=False, is_provider=True) for _ in range(sellers)]
    now = timezone.now()
    inst = factories.open_instrument(
        tier=tier, day=now.date() + dt.timedelta(days=next(_frag_days)),
        delivery_start=now - dt.timedelta(hours=1), delivery_end=now + dt.timedelta(hours=2),
    )  # fmt: skip
    for i, lots in enumerate(pieces):
        factories.place(providers[i % sellers], inst, "sell", lots, price)
    factories.place(buyer, inst, "buy", sum(pieces), price)
    instrument_match(instrument_id=inst.pk)
    left = delivered
    for p in providers:  # each provider reports (up to) its own share, in whole tokens of output
        mine = sum(t.quantity for t in Trade.objects.filter(instrument=inst, seller=p))
        take = min(left, mine)
        left -= take
        if take:
            usage_ingest(provider=p, events=[event(buyer, inst, prompt=take, completion=0)])
    instrument_settle(instrument_id=inst.pk, now=after_grace(inst), chunk_contracts=chunk)
    assert_invariants()
    return list(Settlement.objects.filter(trade__instrument=inst))


@pytest.mark.django_db
@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    split=splits().filter(lambda s: len(s[1]) <= 12),
    cents=st.integers(1, 900),
    tier=st.sampled_from(["standard", "batch", "frontier"]),
    delivered_share=st.fractions(0, 1),
    many_sellers=st.booleans(),
    chunk=st.sampled_from([1, 3, 2000]),
)
def test_through_the_matcher_one_fill_and_n_fills_pay_the_same_fees(
    catalog, settings, split, cents, tier, delivered_share, many_sellers, chunk
):
    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = 5, 10
    lots, parts = split
    price = str(Decimal(cents) / 100)
    delivered = int(lots * M * delivered_share)
    one = _run_fragmented(pieces=[lots], price=price, tier=tier, delivered=delivered, sellers=1, chunk=chunk)
    sellers = len(parts) if many_sellers else 1
    many = _run_fragmented(pieces=[p // M for p in parts], price=price, tier=tier, delivered=delivered,
                           sellers=sellers, chunk=chunk)  # fmt: skip
    assert abs(sum(s.buyer_fee for s in one) - sum(s.buyer_fee for s in many)) <= D("0.01")
    if sellers == 1:
        assert abs(sum(s.seller_fee for s in one) - sum(s.seller_fee for s in many)) <= D("0.01")
