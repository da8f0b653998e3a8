"""The whole money flow as a hypothesis state machine, checked against a plain Python model.

Rules: deposit, withdraw, place (buy/sell), cancel, match, ingest usage (with repeats,
conflicting repeats, out-of-order and out-of-period timestamps), settle (sometimes twice).
The model knows, without the exchange's code: each participant's money (deposits -
withdrawals - what buyers paid + what providers received), which usage events exist and what
each ingest must answer, and what each contract must pay at settlement (its own arithmetic).
After every step: the model agrees with the database, and tests.invariants holds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from marketplace.models import LIVE_STATUSES, Order, Trade
from marketplace.services import ServiceError, order_cancel
from metering.models import Settlement, UsageEvent
from metering.selectors import balances_get
from metering.services import funds_deposit, funds_withdraw
from metering.settlement import settlements_run_due
from metering.usage import usage_ingest
from pricing.services import instrument_match
from tests import factories
from tests.invariants import assert_invariants

from .builders import after_grace, spot_instrument

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

PERIODS = [("standard", "cn-west-1"), ("frontier", "us-east-1"), ("batch", "eu-central-1"), ("economy", "cn-east-1")]
CENT = Decimal("0.01")


def cents(x: Decimal) -> Decimal:
    return x.quantize(CENT, rounding=ROUND_HALF_EVEN)


@dataclass
class Model:
    cash: dict[int, Decimal] = field(default_factory=dict)  # account id -> available + escrow
    events: dict[tuple[int, str], tuple] = field(default_factory=dict)  # (provider, id) -> payload
    usage: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (inst, buyer, provider) -> tokens
    settled_instruments: set[int] = field(default_factory=set)
    settled_contracts: int = 0


class MoneyFlow(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.model = Model()
        self.serial = 0

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    @initialize()
    def setup(self) -> None:
        self.buyers = [factories.AccountFactory(is_buyer=True) for _ in range(2)]
        self.providers = [factories.AccountFactory(is_buyer=False, is_provider=True) for _ in range(2)]
        for a in self.buyers + self.providers:
            self.model.cash[a.pk] = Decimal("0.00")
        for a in self.buyers:
            funds_deposit(account=a, amount=Decimal("100.00"))
            self.model.cash[a.pk] += Decimal("100.00")
        self.period = 0
        self.inst = spot_instrument(tier=PERIODS[0][0], region=PERIODS[0][1])
        self.instruments = [self.inst]

    # --- money in and out ---------------------------------------------------------------

    @rule(who=st.integers(0, 1), amount=st.decimals(min_value="0.01", max_value="500", places=2))
    def deposit(self, who: int, amount: Decimal) -> None:
        funds_deposit(account=self.buyers[who], amount=amount)
        self.model.cash[self.buyers[who].pk] += amount

    @rule(who=st.integers(0, 3), amount=st.decimals(min_value="0.01", max_value="300", places=2))
    def withdraw(self, who: int, amount: Decimal) -> None:
        acct = (self.buyers + self.providers)[who]
        available = balances_get(account=acct)["available"]
        try:
            funds_withdraw(account=acct, amount=amount)
        except ServiceError as exc:
            assert exc.code == "insufficient_funds" and amount > available
            return
        assert amount <= available
        self.model.cash[acct.pk] -= amount

    # --- orders -------------------------------------------------------------------------

    @rule(who=st.integers(0, 1), side=st.sampled_from(["buy", "sell"]), mtok=st.integers(1, 5),
          price=st.sampled_from(["0.50", "1.00", "1.25", "1.50", "2.00"]))
    def place(self, who: int, side: str, mtok: int, price: str) -> None:
        acct = (self.buyers if side == "buy" else self.providers)[who]
        try:
            factories.place(acct, self.inst, side, mtok, price)
        except ServiceError as exc:
            assert exc.code == "insufficient_funds"

    @rule(data=st.data())
    def cancel(self, data) -> None:
        live = list(Order.objects.filter(instrument=self.inst, status__in=LIVE_STATUSES).order_by("id"))
        if not live:
            return
        order = data.draw(st.sampled_from(live))
        try:
            order_cancel(account=order.account, order_id=order.pk)
        except ServiceError as exc:  # the cancel first matched what was pending: it filled
            assert exc.code == "order_not_cancellable"

    @rule(buyer=st.integers(0, 1), provider=st.integers(0, 1), mtok=st.integers(1, 8),
          price=st.sampled_from(["0.50", "1.00", "1.50", "3.00"]), provider_first=st.booleans())
    def cross(self, buyer: int, provider: int, mtok: int, price: str, provider_first: bool) -> None:
        """A sell and a buy at one price, then matching: the common way contracts appear."""
        order = [("sell", self.providers[provider]), ("buy", self.buyers[buyer])]
        for side, acct in order if provider_first else order[::-1]:
            try:
                factories.place(acct, self.inst, side, mtok, price)
            except ServiceError as exc:
                assert exc.code == "insufficient_funds"
        instrument_match(instrument_id=self.inst.pk)

    @rule()
    def match(self) -> None:
        instrument_match(instrument_id=self.inst.pk)

    # --- usage --------------------------------------------------------------------------

    @rule(
        data=st.data(),
        who=st.integers(0, 1),
        whom=st.integers(0, 1),
        n=st.integers(1, 6),
    )
    def ingest(self, data, who: int, whom: int, n: int) -> None:
        provider, buyer = self.providers[who], self.buyers[whom]
        inst = data.draw(st.sampled_from(self.instruments), label="instrument")
        contracts = list(Trade.objects.filter(instrument=self.inst).values_list("buyer_id", "seller_id").distinct())
        if contracts and data.draw(st.booleans(), label="on a contract"):
            # Mostly report on a real contract of the current period; sometimes anything.
            buyer_id, provider_id = data.draw(st.sampled_from(sorted(contracts)))
            buyer = next(a for a in self.buyers if a.pk == buyer_id)
            provider = next(a for a in self.providers if a.pk == provider_id)
            inst = self.inst
        now = timezone.now()
        batch, expected = [], []
        known = [k for k in self.model.events if k[0] == provider.pk]
        for _ in range(n):
            kind = data.draw(st.sampled_from(["new", "new", "repeat", "conflict"]) if known else st.just("new"))
            if kind == "new":
                self.serial += 1
                eid = f"e{self.serial}"
                prompt = data.draw(st.integers(0, 3_000_000))
                payload = (
                    buyer.slug,
                    inst.symbol,
                    (now + dt.timedelta(seconds=data.draw(st.integers(-30, 120)))).isoformat(),
                    prompt,
                    data.draw(st.integers(0, prompt)),
                    data.draw(st.integers(0, 1_000_000)),
                )
            else:
                pid, eid = data.draw(st.sampled_from(known))
                payload = self.model.events[(pid, eid)]
                if kind == "conflict":
                    payload = payload[:3] + (payload[3] + 1,) + payload[4:]
            b, sym, ts, prompt, cached, completion = payload
            batch.append({
                "event_id": eid, "buyer": b, "instrument": sym, "timestamp": ts,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "prompt_tokens_details": {"cached_tokens": cached}},
            })  # fmt: skip
            expected.append(self._predict(provider, eid, payload, now))
        report = usage_ingest(provider=provider, events=batch, now=now)
        for r, (status, reason) in zip(report.results, expected, strict=True):
            assert (r.status, r.reason or None) == (status, reason), (r, status, reason)

    def _inst_by_symbol(self, symbol: str):
        return next(i for i in self.instruments if i.symbol == symbol)

    @staticmethod
    def _billable(inst, payload) -> int:
        _, _, _, prompt, cached, completion = payload
        tier = inst.tier
        exact = (prompt - cached) + cached * tier.cached_input_weight + completion * tier.output_token_weight
        return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))

    def _predict(self, provider, eid, payload, now):
        """(status, reason) by the model's own rules; an accepted event is recorded at once, so a
        repeat later in the same batch is predicted as a duplicate."""
        stored = self.model.events.get((provider.pk, eid))
        if stored is not None:
            return ("duplicate", None) if stored == payload else ("conflict", "conflict")
        inst = self._inst_by_symbol(payload[1])
        buyer_id = next(a.pk for a in self.buyers if a.slug == payload[0])
        trades = Trade.objects.filter(instrument=inst, buyer_id=buyer_id, seller=provider).order_by("executed_at")
        if not trades:
            return ("rejected", "no_contract")
        if inst.pk in self.model.settled_instruments:
            return ("rejected", "already_settled")
        ts = dt.datetime.fromisoformat(payload[2])
        if not (max(inst.delivery_start, trades[0].executed_at) <= ts < inst.delivery_end):
            return ("rejected", "outside_delivery_period")
        self.model.events[(provider.pk, eid)] = payload
        key = (inst.pk, buyer_id, provider.pk)
        self.model.usage[key] = self.model.usage.get(key, 0) + self._billable(inst, payload)
        return ("accepted", None)

    # --- settlement ---------------------------------------------------------------------

    @precondition(lambda self: self.period < len(PERIODS) - 1 and Trade.objects.filter(instrument=self.inst).exists())
    @rule(twice=st.booleans())
    def settle(self, twice: bool) -> None:
        inst = self.inst
        contracts = list(Trade.objects.filter(instrument=inst).order_by("match_sequence"))
        # The model's settlement: usage oldest first, then its own arithmetic to the cent.
        share = inst.tier.unused_capacity_share
        # Fees: unrounded per contract, rounded once per account and role on the instrument.
        left: dict[tuple[int, int], int] = {}
        fees: dict[tuple[str, int], Decimal] = {}
        for t in contracts:
            pair = (t.buyer_id, t.seller_id)
            left.setdefault(pair, self.model.usage.get((inst.pk, t.buyer_id, t.seller_id), 0))
            delivered = min(t.quantity, left[pair])
            left[pair] -= delivered
            exact = (delivered + share * (t.quantity - delivered)) * t.price / 1_000_000
            value = cents(exact)
            fees[("buyer", t.buyer_id)] = fees.get(("buyer", t.buyer_id), Decimal(0)) + exact * t.buyer_fee_bps / 10_000
            fees[("seller", t.seller_id)] = fees.get(("seller", t.seller_id), Decimal(0)) + exact * t.seller_fee_bps / 10_000
            self.model.cash[t.buyer_id] -= value
            self.model.cash[t.seller_id] += value
        for (_, account_id), exact_fee in fees.items():
            self.model.cash[account_id] -= cents(exact_fee)
        report = settlements_run_due(now=after_grace(inst))
        assert report.contracts == len(contracts)
        assert report.overage_tokens == sum(left.values())
        if twice:
            assert settlements_run_due(now=after_grace(inst)).contracts == 0
        self.model.settled_instruments.add(inst.pk)
        self.model.settled_contracts += len(contracts)
        self.period += 1
        self.inst = spot_instrument(tier=PERIODS[self.period][0], region=PERIODS[self.period][1])
        self.instruments.append(self.inst)

    # --- the model agrees with the database ---------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "buyers"):
            return
        for acct in self.buyers + self.providers:
            b = balances_get(account=acct)
            assert b["available"] + b["escrow"] == self.model.cash[acct.pk], acct
        assert set(UsageEvent.objects.values_list("provider_id", "event_id")) == set(self.model.events)
        assert Settlement.objects.count() == self.model.settled_contracts
        assert_invariants()


def test_money_flow_state_machine(catalog, settings):
    settings.MAKER_FEE_BPS = 5
    settings.TAKER_FEE_BPS = 10
    run_state_machine_as_test(
        MoneyFlow,
        settings=hsettings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
