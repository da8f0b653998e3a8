"""The whole money flow as a hypothesis state machine, checked against a plain Python model.

Rules: deposit, withdraw, place (buy/sell), cancel, match, ingest usage (with repeats,
conflicting repeats, out-of-order and out-of-period timestamps), settle (sometimes twice).
The model knows, without the exchange's code: each participant's money (deposits -
withdrawals - what buyers paid + what providers received), which usage events exist and what
each ingest must answer, and what each contract must pay at settlement (its own arithmetic).
After every step: the model agrees with the database (each account's available and escrow
separately: escrow recomputed by the documented reservation rule, tests/metering/reference.py,
from the orders the machine placed and the contracts they made), and tests.invariants holds.

The strategies are biased towards the interesting states (usage mostly valid and on a real
contract, settlements with and without overage, cancels of partly filled orders), and the
wrapper test asserts that each of them was reached in the run (`REACHED`).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, event, target
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

from . import reference
from .builders import after_grace, spot_instrument

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

PERIODS = [("standard", "cn-west-1"), ("frontier", "us-east-1"), ("batch", "eu-central-1"), ("economy", "cn-east-1")]
MAKER_BPS, TAKER_BPS = 5, 10
# What the runs of one test reached (reset by the test, asserted after the machine has run).
REACHED: Counter = Counter()


def reached(what: str) -> None:
    REACHED[what] += 1
    event(what)


@dataclass
class Model:
    cash: dict[int, Decimal] = field(default_factory=dict)  # account id -> available + escrow
    events: dict[tuple[int, str], tuple] = field(default_factory=dict)  # (provider, id) -> payload
    usage: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (inst, buyer, provider) -> tokens
    settled_instruments: set[int] = field(default_factory=set)
    settled_contracts: int = 0
    buys: dict[int, tuple[int, int, Decimal]] = field(default_factory=dict)  # order id -> (buyer, lots, limit)


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
        self._place(acct, side, mtok, price)

    def _place(self, acct, side: str, mtok: int, price: str) -> Order | None:
        try:
            order = factories.place(acct, self.inst, side, mtok, price)
        except ServiceError as exc:
            assert exc.code == "insufficient_funds"
            return None
        if side == "buy":
            self.model.buys[order.pk] = (acct.pk, mtok, Decimal(price))
        return order

    @rule(data=st.data())
    def cancel(self, data) -> None:
        live = list(Order.objects.filter(instrument=self.inst, status__in=LIVE_STATUSES).order_by("id"))
        if not live:
            return
        order = data.draw(st.sampled_from(live))
        try:
            done = order_cancel(account=order.account, order_id=order.pk)
        except ServiceError as exc:  # the cancel first matched what was pending: it filled
            assert exc.code == "order_not_cancellable"
            return
        if done.filled_quantity:
            reached("cancel after a partial fill")

    @rule(buyer=st.integers(0, 1), provider=st.integers(0, 1), mtok=st.integers(1, 4), rest=st.integers(1, 4),
          price=st.sampled_from(["0.50", "1.00", "1.50", "3.00"]))  # fmt: skip
    def cross_partly_then_cancel(self, buyer: int, provider: int, mtok: int, rest: int, price: str) -> None:
        """A buy larger than the sell it meets, then a cancel of what is left: the cancel must
        release exactly the unfilled lots' reservation (PRODUCT.md §5)."""
        self._place(self.providers[provider], "sell", mtok, price)
        order = self._place(self.buyers[buyer], "buy", mtok + rest, price)
        instrument_match(instrument_id=self.inst.pk)
        if order is None:
            return
        order.refresh_from_db()
        if order.status != "partially_filled":  # other resting orders took part
            return
        before = balances_get(account=order.account)
        order_cancel(account=order.account, order_id=order.pk)
        after = balances_get(account=order.account)
        release = reference.order_holds(quantity=order.quantity, filled=order.filled_quantity, price=order.price,
                                        max_fee_bps=max(MAKER_BPS, TAKER_BPS))  # fmt: skip
        assert (after["available"] - before["available"], before["escrow"] - after["escrow"]) == (release, release)
        reached("cancel after a partial fill")

    @rule(buyer=st.integers(0, 1), provider=st.integers(0, 1), mtok=st.integers(1, 8),
          price=st.sampled_from(["0.50", "1.00", "1.50", "3.00"]), provider_first=st.booleans())
    def cross(self, buyer: int, provider: int, mtok: int, price: str, provider_first: bool) -> None:
        """A sell and a buy at one price, then matching: the common way contracts appear."""
        order = [("sell", self.providers[provider]), ("buy", self.buyers[buyer])]
        for side, acct in order if provider_first else order[::-1]:
            self._place(acct, side, mtok, price)
        instrument_match(instrument_id=self.inst.pk)

    @rule()
    def match(self) -> None:
        instrument_match(instrument_id=self.inst.pk)

    # --- usage --------------------------------------------------------------------------

    @precondition(lambda self: Trade.objects.filter(instrument=self.inst).exists())
    @rule(data=st.data(), fraction=st.sampled_from(["0.2", "0.6", "1", "1.4", "2.5"]), k=st.integers(1, 3))
    def deliver(self, data, fraction: str, k: int) -> None:
        """Valid usage on a real contract, sized against the pair's contracted quantity: some
        leave capacity unused, some exactly fill it, some run into overage."""
        pairs = sorted(set(Trade.objects.filter(instrument=self.inst).values_list("buyer_id", "seller_id")))
        buyer_id, provider_id = data.draw(st.sampled_from(pairs), label="pair")
        buyer = next(a for a in self.buyers if a.pk == buyer_id)
        provider = next(a for a in self.providers if a.pk == provider_id)
        contracted = sum(Trade.objects.filter(instrument=self.inst, buyer=buyer, seller=provider).values_list(
            "quantity", flat=True))  # fmt: skip
        per_event = int(contracted * Decimal(fraction)) // k
        now = timezone.now()
        batch, expected = [], []
        for _ in range(k):
            self.serial += 1
            eid = f"e{self.serial}"
            payload = (buyer.slug, self.inst.symbol, (now + dt.timedelta(seconds=1)).isoformat(), per_event, 0, 0)
            batch.append({"event_id": eid, "buyer": buyer.slug, "instrument": self.inst.symbol, "timestamp": payload[2],
                          "usage": {"prompt_tokens": per_event, "completion_tokens": 0}})  # fmt: skip
            expected.append(self._predict(provider, eid, payload, now))
        report = usage_ingest(provider=provider, events=batch, now=now)
        assert [(r.status, r.reason or None) for r in report.results] == expected
        assert {status for status, _ in expected} == {"accepted"}
        reached("usage accepted")

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
        if contracts and data.draw(st.sampled_from([True] * 5 + [False]), label="on a contract"):
            # Mostly report on a real contract of the current period; sometimes anything.
            buyer_id, provider_id = data.draw(st.sampled_from(sorted(contracts)))
            buyer = next(a for a in self.buyers if a.pk == buyer_id)
            provider = next(a for a in self.providers if a.pk == provider_id)
            inst = self.inst
        now = timezone.now()
        batch, expected = [], []
        known = [k for k in self.model.events if k[0] == provider.pk]
        # Small requests leave capacity unused, large ones run into overage.
        scale = data.draw(st.sampled_from([200_000, 200_000, 3_000_000]), label="request size")
        for _ in range(n):
            kind = data.draw(st.sampled_from(["new"] * 4 + ["repeat", "conflict"]) if known else st.just("new"))
            if kind == "new":
                self.serial += 1
                eid = f"e{self.serial}"
                prompt = data.draw(st.integers(0, scale))
                # Mostly inside the delivery (just after the trade); sometimes before it or ahead.
                offset = data.draw(st.integers(1, 60) | st.integers(1, 60) | st.integers(-30, 120))
                payload = (
                    buyer.slug,
                    inst.symbol,
                    (now + dt.timedelta(seconds=offset)).isoformat(),
                    prompt,
                    data.draw(st.integers(0, prompt)),
                    data.draw(st.integers(0, scale // 3)),
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
        if report.count("accepted"):
            reached("usage accepted")

    def _inst_by_symbol(self, symbol: str):
        return next(i for i in self.instruments if i.symbol == symbol)

    @staticmethod
    def _billable(inst, payload) -> int:
        _, _, _, prompt, cached, completion = payload
        return reference.billable(prompt=prompt, cached=cached, completion=completion,
                                  cached_weight=inst.tier.cached_input_weight,
                                  output_weight=inst.tier.output_token_weight)  # fmt: skip

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
        trades = list(Trade.objects.filter(instrument=inst).order_by("match_sequence"))
        # The model's settlement: the reference (usage oldest first, its own arithmetic).
        contracts = [
            reference.Contract(t.pk, (t.buyer_id, t.seller_id), t.match_sequence, t.quantity, t.price,
                               *self._fees_bps(t), self._contract_escrow(t))  # fmt: skip
            for t in trades
        ]
        usage = {(b, p): n for (i, b, p), n in self.model.usage.items() if i == inst.pk}
        pays, overage = reference.settle(contracts, usage, inst.tier.unused_capacity_share)
        for c in contracts:
            self.model.cash[c.pair[0]] -= pays[c.key].value + pays[c.key].buyer_fee
            self.model.cash[c.pair[1]] += pays[c.key].provider
        report = settlements_run_due(now=after_grace(inst))
        assert report.contracts == len(contracts)
        assert report.overage_tokens == sum(overage.values())
        for s in Settlement.objects.filter(trade__instrument=inst):
            want = pays[s.trade_id]
            assert (s.delivered_tokens, s.overage_tokens, s.value, s.buyer_fee, s.seller_fee, s.refund) == (
                want.delivered, overage[s.trade_id], want.value, want.buyer_fee, want.seller_fee, want.refund,
            )  # fmt: skip
        total_overage = sum(overage.values())
        target(float(total_overage), label=f"overage tokens at settlement {self.period}")
        reached("settlement with overage" if total_overage else "settlement without overage")
        if any(p.delivered for p in pays.values()):
            reached("settlement with delivery")
        if twice:
            assert settlements_run_due(now=after_grace(inst)).contracts == 0
        self.model.settled_instruments.add(inst.pk)
        self.model.settled_contracts += len(contracts)
        self.period += 1
        self.inst = spot_instrument(tier=PERIODS[self.period][0], region=PERIODS[self.period][1])
        self.instruments.append(self.inst)

    # --- the model agrees with the database ---------------------------------------------

    @staticmethod
    def _fees_bps(t: Trade) -> tuple[int, int]:
        """(buyer, seller) fee rates: the taker is the side that arrived last (PRODUCT.md §5)."""
        return (TAKER_BPS, MAKER_BPS) if t.aggressor_side == "buy" else (MAKER_BPS, TAKER_BPS)

    def _contract_escrow(self, t: Trade) -> Decimal:
        """What the fill took from its buy order's reservation, at most its value plus fee
        (reference.fill_split), the order's earlier fills (match sequence) taken into account."""
        order = Order.objects.get(pk=t.buy_order_id)
        before = sum(
            Trade.objects.filter(buy_order_id=t.buy_order_id, match_sequence__lt=t.match_sequence).values_list(
                "quantity", flat=True
            )
        )
        keep, _ = reference.fill_split(
            order_quantity=order.quantity, limit=order.price, max_fee_bps=max(MAKER_BPS, TAKER_BPS),
            filled_before=before, quantity=t.quantity, price=t.price, fee_bps=self._fees_bps(t)[0],
        )  # fmt: skip
        return keep

    def _escrow(self) -> dict[int, Decimal]:
        """Each account's escrow by the documented rules: every live buy the machine placed holds
        its reservation (quantity x limit + the highest fee, rounded up once) less that of what
        filled; every unsettled contract what its fill took, at most its value plus fee."""
        escrow = {a.pk: Decimal("0.00") for a in self.buyers + self.providers}
        lot = self.inst.lot_size
        for order_id, status, filled in Order.objects.filter(pk__in=self.model.buys).values_list(
            "pk", "status", "filled_quantity"
        ):
            buyer, lots, limit = self.model.buys[order_id]
            if status in LIVE_STATUSES:
                escrow[buyer] += reference.order_holds(quantity=lots * lot, filled=filled, price=limit,
                                                       max_fee_bps=max(MAKER_BPS, TAKER_BPS))  # fmt: skip
        for t in Trade.objects.filter(settlement__isnull=True):
            assert t.buyer_escrow == self._contract_escrow(t), t
            escrow[t.buyer_id] += self._contract_escrow(t)
        return escrow

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "buyers"):
            return
        escrow = self._escrow()
        for acct in self.buyers + self.providers:
            b = balances_get(account=acct)
            want = (self.model.cash[acct.pk] - escrow[acct.pk], escrow[acct.pk])
            assert (b["available"], b["escrow"]) == want, acct
        assert set(UsageEvent.objects.values_list("provider_id", "event_id")) == set(self.model.events)
        assert Settlement.objects.count() == self.model.settled_contracts
        assert_invariants()


def test_money_flow_state_machine(catalog, settings):
    settings.MAKER_FEE_BPS = MAKER_BPS
    settings.TAKER_FEE_BPS = TAKER_BPS
    REACHED.clear()
    run_state_machine_as_test(
        MoneyFlow,
        settings=hsettings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    # The run went where the bugs are, not only through deposits and rejections.
    for what in ("usage accepted", "settlement with delivery", "settlement with overage",
                 "settlement without overage", "cancel after a partial fill"):  # fmt: skip
        assert REACHED[what] > 0, (what, dict(REACHED))
