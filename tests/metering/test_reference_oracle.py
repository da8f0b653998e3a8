"""The exchange's money rules against the independent reference in tests/metering/reference.py.

- the reference itself reproduces the README's worked example (so the oracle is anchored to the
  document, not to the code);
- the pure rules (metering.money, settlement allocation and amounts, billable tokens) agree with
  it on random inputs, including exact half cents and half tokens;
- the real service on the database (orders, matching, usage ingestion, settlement, ledger)
  pays what the reference says, to the cent, on random markets.

Tests here that pin today's rounding and fee rules (a change to them must change these tests):
test_money_rules_agree_with_the_reference, test_half_cents_round_to_even_and_reservations_round_up,
test_reservation_covers_the_contract_escrow.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext

import pytest
from django.db import transaction
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from marketplace.models import Tier, Trade
from metering import money
from metering.ledger import system_account
from metering.models import Settlement, UsageEvent
from metering.selectors import balances_get
from metering.settlement import allocate, settlement_amounts, settlements_run_due
from metering.usage import billable_tokens, usage_ingest
from tests import factories

from . import reference as ref
from .builders import D, after_grace, contract, event, spot_instrument

MAKER_BPS, TAKER_BPS = 5, 10

prices = st.integers(1, 99_999).map(lambda c: Decimal(c) / 100)
bps = st.integers(0, 500)
shares = st.integers(0, 100).map(lambda p: Decimal(p) / 100)
weights = st.integers(0, 80_000).map(lambda w: Decimal(w) / 10_000)
cents_amounts = st.integers(0, 10**9).map(lambda c: Decimal(c) / 100)


# --- the oracle is anchored to the README -----------------------------------------------------


def test_the_reference_reproduces_the_readme_worked_example():
    # README: buy 200 Mtok at 1.50 (taker 10 bps), deliver 150 Mtok, standard share 0.25.
    assert ref.reserve(quantity=200_000_000, price=D("1.50"), max_fee_bps=10) == D("300.30")
    escrow = ref.contract_escrow(quantity=200_000_000, price=D("1.50"), fee_bps=10)
    assert escrow == D("300.30")
    assert ref.billable(prompt=400_000, cached=100_000, completion=100_000, cached_weight=D("0.25"),
                        output_weight=D("3")) == 625_000  # fmt: skip
    delivered, overage = ref.allocate_oldest_first(240 * 625_000, [200_000_000])
    assert (delivered, overage) == ([150_000_000], 0)
    pay = ref.contract_pay(quantity=200_000_000, delivered=150_000_000, price=D("1.50"), share=D("0.25"),
                           buyer_bps=10, seller_bps=5, escrow=escrow)  # fmt: skip
    assert (pay.value, pay.buyer_fee, pay.seller_fee, pay.provider, pay.refund) == (
        D("243.75"), D("0.24"), D("0.12"), D("243.63"), D("56.31"),
    )  # fmt: skip


def test_the_reference_rounding_by_hand():
    assert [ref.cents_half_even(D(x)) for x in ("0.005", "0.015", "0.025", "0.0251", "-0.005")] == [
        D("0.00"), D("0.02"), D("0.02"), D("0.03"), D("0.00"),
    ]  # fmt: skip
    assert [ref.cents_up(D(x)) for x in ("0.001", "0.01", "0.0100001", "0")] == [D("0.01"), D("0.01"), D("0.02"), D("0")]
    assert [ref.half_even(ref.Fraction(n, 2)) for n in (1, 3, 5, -1)] == [0, 2, 2, 0]


# --- the pure rules against the reference -------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(amount=st.integers(-(10**12), 10**12).map(lambda m: Decimal(m) / 10**6), fee_bps=bps, price=prices,
       tokens=st.integers(0, 10**10))  # fmt: skip
def test_money_rules_agree_with_the_reference(amount, fee_bps, price, tokens):
    assert money.round_charge(amount) == ref.cents_half_even(amount)
    assert money.round_reserve(amount) == ref.cents_up(amount)
    assert money.notional(tokens, price) == Decimal(tokens) * price / 1_000_000
    assert money.fee(abs(amount), fee_bps) == ref.cents_half_even(ref.Fraction(abs(amount)) * fee_bps / 10_000)
    assert money.reserve(quantity=tokens, price=price, max_fee_bps=fee_bps) == ref.reserve(
        quantity=tokens, price=price, max_fee_bps=fee_bps
    )
    assert money.contract_need(quantity=tokens, price=price, fee_bps=fee_bps) == ref.contract_need(
        quantity=tokens, price=price, fee_bps=fee_bps
    )


def test_the_rounding_rule_does_not_depend_on_the_ambient_decimal_context():
    """The rule is written into each rounding, not left to whatever context the thread has."""
    tier = Tier(cached_input_weight=D("0.5"), output_token_weight=D("1"))
    for mode in (ROUND_HALF_UP, ROUND_DOWN, ROUND_CEILING):
        with localcontext() as ctx:
            ctx.rounding = mode
            assert (money.round_charge(D("0.025")), money.round_charge(D("0.035"))) == (D("0.02"), D("0.04"))
            assert money.round_charge(D("0.0251")) == D("0.03") and money.round_charge(D("0.0249")) == D("0.02")
            assert money.round_reserve(D("0.021")) == D("0.03") and money.round_reserve(D("-0.029")) == D("-0.02")
            assert billable_tokens(prompt=1, cached=1, completion=0, weights=tier) == 0  # 0.5 -> 0
            assert billable_tokens(prompt=3, cached=3, completion=0, weights=tier) == 2  # 1.5 -> 2


def test_half_cents_round_to_even_and_reservations_round_up():
    assert [money.round_charge(D(x)) for x in ("0.005", "0.015", "0.025", "2.675", "0.0051")] == [
        D("0.00"), D("0.02"), D("0.02"), D("2.68"), D("0.01"),
    ]  # fmt: skip
    assert [money.round_reserve(D(x)) for x in ("0.001", "0.01", "1.2300001", "-0.019")] == [
        D("0.01"), D("0.01"), D("1.24"), D("-0.01"),
    ]  # fmt: skip
    # Fees: 243.75 x 10 bps = 0.24375 -> 0.24; 5 bps of 50.00 = 0.025 -> 0.02 (even); of 70.00 = 0.035 -> 0.04.
    assert (money.fee(D("243.75"), 10), money.fee(D("50.00"), 5), money.fee(D("70.00"), 5)) == (D("0.24"), D("0.02"), D("0.04"))
    assert money.fee(D("100.00"), 0) == D("0.00")
    # Reserved once on the whole order: 1 Mtok at 1.50 with 10 bps: ceil(1.5015) = 1.51; 100 Mtok
    # at 0.30: ceil(30.03) = 30.03 (not 100 x 0.31); 3 tokens at 0.01 per Mtok: ceil(3e-8) = 0.01.
    assert money.reserve(quantity=1_000_000, price=D("1.50"), max_fee_bps=10) == D("1.51")
    assert money.reserve(quantity=100_000_000, price=D("0.30"), max_fee_bps=10) == D("30.03")
    assert money.reserve(quantity=3, price=D("0.01"), max_fee_bps=0) == D("0.01")
    assert money.contract_need(quantity=200_000_000, price=D("1.50"), fee_bps=10) == D("300.30")
    assert money.contract_need(quantity=1_000_000, price=D("2.00"), fee_bps=0) == D("2.00")
    assert money.notional(1_500_000, D("2.00")) == D("3.00")


@settings(max_examples=200, deadline=None)
@given(lots=st.integers(1, 500), lot=st.sampled_from([1, 1_000, 1_000_000, 3_333_333]), limit=prices,
       below=st.integers(0, 500), fee_bps=bps)  # fmt: skip
def test_reservation_covers_the_contract_escrow(lots, lot, limit, below, fee_bps):
    """A buy's reservation (at its limit, highest fee, rounded once) covers a complete fill at or
    below the limit, and a fill's split takes no more than the order holds and releases >= 0."""
    price = max(limit - Decimal(below) / 100, Decimal("0.01"))
    held = money.reserve(quantity=lots * lot, price=limit, max_fee_bps=fee_bps)
    assert held >= money.contract_need(quantity=lots * lot, price=price, fee_bps=fee_bps)
    split = money.fill_escrow(order_quantity=lots * lot, limit=limit, max_fee_bps=fee_bps, filled_before=0,
                              quantity=lot, price=price, buyer_fee_bps=fee_bps)  # fmt: skip
    assert split.contract >= 0 and split.release >= 0
    assert (split.contract, split.release) == ref.fill_split(
        order_quantity=lots * lot, limit=limit, max_fee_bps=fee_bps, filled_before=0, quantity=lot, price=price,
        fee_bps=fee_bps,
    )


@settings(max_examples=400, deadline=None)
@given(usage=st.integers(0, 10**9), quantities=st.lists(st.integers(1, 10**8), max_size=6))
def test_allocation_is_oldest_first(usage, quantities):
    assert allocate(usage=usage, quantities=quantities) == ref.allocate_oldest_first(usage, quantities)


def test_allocation_examples():
    assert allocate(usage=25, quantities=[10, 10, 10]) == ([10, 10, 5], 0)
    assert allocate(usage=35, quantities=[10, 10, 10]) == ([10, 10, 10], 5)
    assert allocate(usage=0, quantities=[10]) == ([0], 0)
    assert allocate(usage=7, quantities=[]) == ([], 7)
    assert allocate(usage=10, quantities=[10, 1]) == ([10, 0], 0)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), quantity=st.integers(0, 10**10), price=prices, share=shares, buyer_bps=bps, seller_bps=bps,
       extra=cents_amounts)  # fmt: skip
def test_settlement_amounts_agree_with_the_reference(data, quantity, price, share, buyer_bps, seller_bps, extra):
    delivered = data.draw(st.integers(0, quantity) | st.just(quantity) | st.just(0))
    escrow = ref.contract_escrow(quantity=quantity, price=price, fee_bps=buyer_bps) + extra
    got = settlement_amounts(quantity=quantity, delivered=delivered, price=price, unused_share=share,
                             buyer_fee_bps=buyer_bps, seller_fee_bps=seller_bps, buyer_escrow=escrow)  # fmt: skip
    want = ref.contract_pay(quantity=quantity, delivered=delivered, price=price, share=share, buyer_bps=buyer_bps,
                            seller_bps=seller_bps, escrow=escrow)  # fmt: skip
    assert (got.delivered, got.unused, got.value, got.buyer_fee, got.seller_fee, got.provider_payout, got.refund) == (
        want.delivered, want.unused, want.value, want.buyer_fee, want.seller_fee, want.provider, want.refund,
    )  # fmt: skip


def test_settlement_amounts_exact_escrow_and_a_short_one():
    # 1 Mtok at 2.00 fully delivered, 10 bps: value 2.00, buyer fee 0.00 (0.002 -> 0.00), refund = escrow - 2.00.
    exact = settlement_amounts(quantity=1_000_000, delivered=1_000_000, price=D("2.00"), unused_share=D("0"),
                               buyer_fee_bps=10, seller_fee_bps=5, buyer_escrow=D("2.00"))  # fmt: skip
    assert (exact.value, exact.buyer_fee, exact.seller_fee, exact.provider_payout, exact.refund) == (
        D("2.00"), D("0.00"), D("0.00"), D("2.00"), D("0.00"),
    )  # fmt: skip
    assert settlement_amounts(quantity=1_000_000, delivered=1_000_000, price=D("2.00"), unused_share=D("0"),
                              buyer_fee_bps=0, seller_fee_bps=0, buyer_escrow=D("2.50")).refund == D("0.50")  # fmt: skip
    # A contract that holds less than its value (never expected) is charged what it holds:
    # never a negative refund, never an exception in the settlement run.
    short = settlement_amounts(quantity=1_000_000, delivered=1_000_000, price=D("2.00"), unused_share=D("0"),
                               buyer_fee_bps=10, seller_fee_bps=0, buyer_escrow=D("1.99"))  # fmt: skip
    assert (short.value, short.buyer_fee, short.refund) == (D("1.99"), D("0.00"), D("0.00"))
    # Nothing delivered on a pay-per-use tier: nothing charged, the whole escrow comes back.
    none = settlement_amounts(quantity=4_000_000, delivered=0, price=D("1.25"), unused_share=D("0"),
                              buyer_fee_bps=10, seller_fee_bps=5, buyer_escrow=D("5.01"))  # fmt: skip
    assert (none.unused, none.value, none.refund) == (4_000_000, D("0.00"), D("5.01"))


@settings(max_examples=500, deadline=None)
@given(data=st.data(), cw=weights, ow=weights)
def test_billable_tokens_agree_with_the_reference(data, cw, ow):
    prompt = data.draw(st.integers(0, 10**8))
    cached = data.draw(st.integers(0, prompt) | st.just(prompt) | st.just(0))
    completion = data.draw(st.integers(0, 10**8))
    tier = Tier(cached_input_weight=cw, output_token_weight=ow)
    assert billable_tokens(prompt=prompt, cached=cached, completion=completion, weights=tier) == ref.billable(
        prompt=prompt, cached=cached, completion=completion, cached_weight=cw, output_weight=ow
    )


def test_billable_tokens_round_half_tokens_to_even():
    tier = Tier(cached_input_weight=D("0.5"), output_token_weight=D("1.5"))
    # cached 1 x 0.5 = 0.5 -> 0; cached 3 x 0.5 = 1.5 -> 2; output 1 x 1.5 = 1.5 -> 2; 5 x 1.5 = 7.5 -> 8.
    assert billable_tokens(prompt=1, cached=1, completion=0, weights=tier) == 0
    assert billable_tokens(prompt=3, cached=3, completion=0, weights=tier) == 2
    assert billable_tokens(prompt=0, cached=0, completion=1, weights=tier) == 2
    assert billable_tokens(prompt=10, cached=0, completion=5, weights=tier) == 18
    assert billable_tokens(prompt=400_000, cached=100_000, completion=100_000,
                           weights=Tier(cached_input_weight=D("0.25"), output_token_weight=D("3"))) == 625_000  # fmt: skip


# --- the real service on the database against the reference --------------------------------------

TIERS = ["standard", "frontier", "batch", "economy"]


@st.composite
def markets(draw):
    n_buyers, n_providers = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    contracts = draw(
        st.lists(
            st.tuples(st.integers(0, n_buyers - 1), st.integers(0, n_providers - 1), st.integers(1, 4),
                      st.integers(37, 311), st.sampled_from(["provider", "buyer"])),  # fmt: skip
            min_size=1,
            max_size=5,
        )
    )
    usage = draw(
        st.lists(
            st.tuples(st.integers(0, n_buyers - 1), st.integers(0, n_providers - 1), st.integers(0, 2_500_000),
                      st.integers(0, 100), st.integers(0, 700_000)),  # fmt: skip
            max_size=8,
        )
    )
    return draw(st.sampled_from(TIERS)), n_buyers, n_providers, contracts, usage


@pytest.mark.slow
@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(market=markets())
def test_settlement_through_the_service_pays_what_the_reference_says(catalog, settings, market):
    settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS = MAKER_BPS, TAKER_BPS
    tier_code, n_buyers, n_providers, specs, usage_specs = market
    assume(any((b, p) in {(s[0], s[1]) for s in specs} for b, p, *_ in usage_specs) or not usage_specs)
    with transaction.atomic():
        _settle_and_compare(tier_code, n_buyers, n_providers, specs, usage_specs)
        transaction.set_rollback(True)


def _settle_and_compare(tier_code, n_buyers, n_providers, specs, usage_specs):
    inst = spot_instrument(tier=tier_code)
    tier = inst.tier
    buyers = [factories.AccountFactory(is_buyer=True) for _ in range(n_buyers)]
    providers = [factories.AccountFactory(is_buyer=False, is_provider=True) for _ in range(n_providers)]
    for b in buyers:
        factories.fund(b, D("1000.00"))
    fees_before = system_account("fees").balance

    # Contracts: the reference's inputs are the specs themselves (quantity, price, who rested).
    ref_contracts = []
    for i, (b, p, mtok, price_cents, maker) in enumerate(specs):
        price = Decimal(price_cents) / 100
        t = contract(buyers[b], providers[p], inst, mtok, str(price), maker=maker)
        buyer_bps, seller_bps = (TAKER_BPS, MAKER_BPS) if maker == "provider" else (MAKER_BPS, TAKER_BPS)
        escrow = ref.contract_escrow(quantity=mtok * inst.lot_size, price=price, fee_bps=buyer_bps)
        assert (t.quantity, t.price, t.buyer_fee_bps, t.seller_fee_bps, t.buyer_escrow) == (
            mtok * inst.lot_size, price, buyer_bps, seller_bps, escrow,
        )  # fmt: skip
        ref_contracts.append(ref.Contract(t.pk, (b, p), i, t.quantity, price, buyer_bps, seller_bps, escrow))

    # Usage: billable tokens from the raw counts and the tier's weights (catalog data).
    pairs = {(s[0], s[1]) for s in specs}
    usage: dict[tuple, int] = {}
    for b, p, prompt, cached_pct, completion in usage_specs:
        if (b, p) not in pairs:
            continue
        cached = prompt * cached_pct // 100
        report = usage_ingest(provider=providers[p], events=[event(buyers[b], inst, prompt=prompt, cached=cached,
                                                                      completion=completion)])  # fmt: skip
        want = ref.billable(prompt=prompt, cached=cached, completion=completion,
                            cached_weight=tier.cached_input_weight, output_weight=tier.output_token_weight)  # fmt: skip
        assert [(r.status, r.billable_tokens) for r in report.results] == [("accepted", want)]
        usage[(b, p)] = usage.get((b, p), 0) + want
    assert sum(UsageEvent.objects.filter(instrument=inst).values_list("billable_tokens", flat=True)) == sum(usage.values())

    pays, overage = ref.settle(ref_contracts, usage, tier.unused_capacity_share)
    report = settlements_run_due(now=after_grace(inst))

    assert report.contracts == len(specs)
    assert report.overage_tokens == sum(overage.values())
    assert report.delivered_tokens == sum(p.delivered for p in pays.values())
    assert report.value == sum(p.value for p in pays.values())
    assert report.fees == sum(p.buyer_fee + p.seller_fee for p in pays.values())
    assert report.refunds == sum(p.refund for p in pays.values())
    for s in Settlement.objects.filter(trade__instrument=inst):
        want = pays[s.trade_id]
        assert (s.delivered_tokens, s.unused_tokens, s.overage_tokens, s.value, s.buyer_fee, s.seller_fee,
                s.provider_payout, s.refund) == (
            want.delivered, want.unused, overage[s.trade_id], want.value, want.buyer_fee, want.seller_fee,
            want.provider, want.refund,
        )  # fmt: skip
    # The ledger: buyers paid value + their fee, providers got value - their fee, fees got both.
    key_of = {c.key: c.pair for c in ref_contracts}
    for i, b in enumerate(buyers):
        paid = sum(p.value + p.buyer_fee for k, p in pays.items() if key_of[k][0] == i)
        assert balances_get(account=b) == {"available": D("1000.00") - paid, "escrow": D("0.00"), "owed": D("0.00")}
    for i, p in enumerate(providers):
        got = sum(x.provider for k, x in pays.items() if key_of[k][1] == i)
        assert balances_get(account=p) == {"available": got, "escrow": D("0.00"), "owed": D("0.00")}
    assert system_account("fees").balance - fees_before == sum(p.buyer_fee + p.seller_fee for p in pays.values())
    assert not Trade.objects.filter(instrument=inst, settlement__isnull=True).exists()
