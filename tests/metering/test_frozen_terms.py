"""Issue 12 item 1: every term that prices or routes a contract is frozen when it is made.

Catalog defaults: standard tier unused-capacity share 0.25, output weight 3, cached weight 0.25;
maker fee 5 bps, taker fee 10 bps (set per test, as an operator sets the environment).
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from marketplace.cache_generation import CATALOG, generation_bump
from marketplace.models import Hardware, Instrument, Tier, Trade
from metering.models import Settlement
from metering.settlement import instrument_settle
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


def _accounts(funds: str = "1000.00"):
    buyer = factories.AccountFactory(is_buyer=True)
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, D(funds))
    return buyer, provider


def _edit_tier(**fields) -> None:
    """An operator's edit in admin (which bumps the catalog generation)."""
    Tier.objects.filter(code="standard").update(**fields)
    generation_bump(name=CATALOG)


def test_an_edit_of_the_unused_share_after_the_trade_does_not_change_what_it_settles_for(catalog):
    """The issue's example: traded at share 0.25, nothing delivered, share edited to 1.0."""
    buyer, provider = _accounts()
    inst = spot_instrument(tier="standard")
    t = contract(buyer, provider, inst, 10, "2.00")
    assert t.unused_capacity_share == D("0.25")
    _edit_tier(unused_capacity_share=D("1.0"))

    instrument_settle(instrument_id=inst.pk, now=after_grace(inst))

    s = Settlement.objects.get(trade=t)
    # 10 Mtok unused x 0.25 x 2.00 = 5.00 (20.00 at the edited share)
    assert (s.delivered_tokens, s.unused_tokens, s.value) == (0, 10_000_000, D("5.00"))
    assert_invariants()


def test_an_edit_of_the_token_weights_after_the_trade_does_not_change_billable_tokens(catalog):
    buyer, provider = _accounts()
    inst = spot_instrument(tier="standard")
    t = contract(buyer, provider, inst, 10, "2.00")
    _edit_tier(output_token_weight=D("10"), cached_input_weight=D("1"))

    by_instrument = event(buyer, inst, prompt=1_000, cached=400, completion=1_000)
    by_contract = event(buyer, None, prompt=1_000, cached=400, completion=1_000, contract_id=t.pk)
    report = usage_ingest(provider=provider, events=[by_instrument, by_contract])

    # 600 + 400 x 0.25 + 1,000 x 3 = 3,700 with the frozen weights (11,000 with the edited ones)
    assert [r.billable_tokens for r in report.results] == [3_700, 3_700]
    assert_invariants()


def test_a_new_order_after_an_edit_freezes_the_new_terms(catalog):
    buyer, provider = _accounts()
    inst = spot_instrument(tier="standard")
    old = contract(buyer, provider, inst, 1, "2.00")
    _edit_tier(unused_capacity_share=D("0.5"))
    inst = Instrument.objects.select_related("tier").get(pk=inst.pk)  # as each request loads it
    new = contract(buyer, provider, inst, 1, "2.00")
    assert (old.unused_capacity_share, new.unused_capacity_share) == (D("0.25"), D("0.5"))
    assert_invariants()


def test_a_trade_takes_the_tier_terms_of_the_resting_order(catalog):
    buyer, provider = _accounts()
    inst = spot_instrument(tier="standard")
    factories.place(buyer, inst, "buy", 2, "2.00")
    instrument_match(instrument_id=inst.pk)
    _edit_tier(unused_capacity_share=D("0.9"))
    factories.place(provider, Instrument.objects.select_related("tier").get(pk=inst.pk), "sell", 2, "2.00")
    instrument_match(instrument_id=inst.pk)
    assert Trade.objects.get(instrument=inst).unused_capacity_share == D("0.25")  # the buy rested
    assert_invariants()


def test_a_hardware_code_rename_does_not_change_which_sells_a_restricted_buy_matches(catalog):
    buyer, provider = _accounts()
    inst = spot_instrument(tier="standard")
    buy = factories.place(buyer, inst, "buy", 3, "2.00", allowed_hardware=["h100"])
    instrument_match(instrument_id=inst.pk)
    h100 = Hardware.objects.get(code="h100")
    assert buy.allowed_hardware_ids == [h100.pk]
    Hardware.objects.filter(pk=h100.pk).update(code="h100-sxm")
    generation_bump(name=CATALOG)

    factories.place(provider, inst, "sell", 2, "1.90", hardware="h200")  # not allowed: rests
    factories.place(provider, inst, "sell", 3, "1.95", hardware="h100-sxm")  # the same hardware
    instrument_match(instrument_id=inst.pk)

    t = Trade.objects.get(instrument=inst)
    assert (t.buy_order_id, t.hardware_id, t.quantity, t.price) == (buy.pk, h100.pk, 3_000_000, D("2.00"))
    assert_invariants()


def test_each_side_pays_the_fee_rate_its_own_order_froze(catalog, settings):
    buyer, provider = _accounts()
    inst = spot_instrument(tier="standard")
    buy = factories.place(buyer, inst, "buy", 10, "2.00")  # maker 5 / taker 10, frozen
    instrument_match(instrument_id=inst.pk)
    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = 20, 40
    sell = factories.place(provider, inst, "sell", 10, "2.00")  # maker 20 / taker 40, frozen
    instrument_match(instrument_id=inst.pk)
    t = Trade.objects.get(instrument=inst)
    # The buy rested: it pays its own maker rate (5); the sell took: its own taker rate (40).
    assert ((buy.maker_fee_bps, buy.taker_fee_bps), (sell.maker_fee_bps, sell.taker_fee_bps)) == ((5, 10), (20, 40))
    assert (t.buyer_fee_bps, t.seller_fee_bps) == (5, 40)
    assert_invariants()


# --- property: catalog and fee edits after a trade never change its settlement ---------------

_days = itertools.count(400)


def _half_even(x: Decimal) -> Decimal:
    return x.quantize(D("0.01"), rounding=ROUND_HALF_EVEN)


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lots=st.integers(1, 20),
    cents=st.integers(1, 500),
    requests=st.integers(0, 30),
    share=st.sampled_from(["0", "0.1", "0.5", "0.75", "1"]),
    out_w=st.sampled_from(["0", "1", "2.5", "8"]),
    maker_bps=st.integers(0, 300),
    taker_bps=st.integers(0, 300),
    rename=st.booleans(),
)
def test_property_catalog_edits_after_a_trade_never_change_its_settlement(
    catalog, settings, lots, cents, requests, share, out_w, maker_bps, taker_bps, rename
):
    buyer, provider = _accounts("100000.00")
    now = timezone.now()
    inst = factories.open_instrument(
        tier="standard", day=now.date() + dt.timedelta(days=next(_days)),
        delivery_start=now - dt.timedelta(hours=1), delivery_end=now + dt.timedelta(hours=2),
    )  # fmt: skip
    price = D(cents) / 100
    t = contract(buyer, provider, inst, lots, str(price))
    before = (t.unused_capacity_share, t.output_token_weight, t.cached_input_weight, t.buyer_fee_bps, t.seller_fee_bps)

    _edit_tier(unused_capacity_share=D(share), output_token_weight=D(out_w))
    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = maker_bps, taker_bps
    if rename:
        Hardware.objects.filter(code="h100").update(code="h100-renamed")
    events = [event(buyer, inst, prompt=100_000, cached=20_000, completion=50_000) for _ in range(requests)]
    usage_ingest(provider=provider, events=events)
    instrument_settle(instrument_id=inst.pk, now=after_grace(inst))
    if rename:
        Hardware.objects.filter(code="h100-renamed").update(code="h100")
    _edit_tier(unused_capacity_share=D("0.25"), output_token_weight=D("3"))
    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = 5, 10

    # What the contract's frozen terms say (the defaults of the day it was made), by hand:
    t.refresh_from_db()
    assert before == (D("0.25"), D("3"), D("0.25"), 10, 5)
    assert (t.unused_capacity_share, t.output_token_weight, t.cached_input_weight, t.buyer_fee_bps, t.seller_fee_bps) == before
    # 80,000 uncached + 20,000 x 0.25 + 50,000 x 3 = 235,000 billable tokens per request
    delivered = min(235_000 * requests, t.quantity)
    exact = (delivered + D("0.25") * (t.quantity - delivered)) * t.price / 1_000_000
    s = Settlement.objects.get(trade=t)
    assert (s.delivered_tokens, s.value) == (delivered, _half_even(exact))
    # The contract is alone on its instrument: each fee is its own exact fee rounded once.
    assert (s.buyer_fee, s.seller_fee) == (_half_even(exact * 10 / 10_000), _half_even(exact * 5 / 10_000))
    assert_invariants()
