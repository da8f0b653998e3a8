"""The invariants of PRODUCT.md §8, checked after every scenario."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from django.db.models import F, Q, Sum

from marketplace.models import LIVE_STATUSES, Order, Trade
from metering.models import LedgerAccount, LedgerEntry


def assert_invariants() -> None:
    # Money sums to zero, and each balance is the sum of its entries. Summed in Python: SQLite
    # SUM() of decimals is a float sum (0.1 + 0.2 != 0.3), the rows themselves are exact.
    sums: dict[int, Decimal] = {}
    for account_id, amount in LedgerEntry.objects.values_list("account_id", "amount").iterator():
        sums[account_id] = sums.get(account_id, Decimal("0")) + amount
    assert sum(sums.values(), Decimal("0")) == 0, "ledger does not sum to zero"
    for la in LedgerAccount.objects.all():
        assert la.balance == sums.get(la.pk, Decimal("0")), f"{la} balance {la.balance} != entries {sums.get(la.pk)}"
        if not la.is_system:
            assert la.balance >= 0, f"{la} is negative"
    # Orders: filled <= quantity; filled equals the sum of trades.
    assert not Order.objects.filter(filled_quantity__gt=F("quantity")).exists()
    buy_fills = dict(Trade.objects.values("buy_order").annotate(q=Sum("quantity")).values_list("buy_order", "q"))
    sell_fills = dict(Trade.objects.values("sell_order").annotate(q=Sum("quantity")).values_list("sell_order", "q"))
    for o in Order.objects.all():
        fills = buy_fills.get(o.pk, 0) if o.side == "buy" else sell_fills.get(o.pk, 0)
        assert o.filled_quantity == fills, f"order {o.pk} filled {o.filled_quantity} but trades say {fills}"
    # Trades respect both limits, the hardware rule and no self-trade.
    for t in Trade.objects.select_related("buy_order", "sell_order", "hardware"):
        assert t.price <= t.buy_order.price and t.price >= t.sell_order.price, f"trade {t.pk} outside limits"
        allowed = t.buy_order.allowed_hardware_ids
        assert not allowed or t.hardware_id in allowed, f"trade {t.pk} breaks the hardware rule"
        assert t.hardware_id == t.sell_order.hardware_id
        assert t.buyer_id != t.seller_id
    # Escrow equals open commitments: what live buy orders still hold plus unsettled contracts.
    expected: dict[int, Decimal] = {}
    for o in Order.objects.filter(side="buy", status__in=LIVE_STATUSES):
        expected[o.account_id] = expected.get(o.account_id, Decimal("0")) + order_open_escrow(o)
    for t in Trade.objects.filter(Q(settlement__isnull=True)):
        expected[t.buyer_id] = expected.get(t.buyer_id, Decimal("0")) + t.buyer_escrow
    for la in LedgerAccount.objects.filter(kind="escrow"):
        assert la.balance == expected.get(la.owner_id, Decimal("0")), (
            f"escrow of {la.owner_id} is {la.balance}, open commitments {expected.get(la.owner_id, 0)}"
        )
    _assert_usage_invariants()


def order_open_escrow(o: Order) -> Decimal:
    """The escrow a live buy order holds (README "Escrow"): its reservation, quantity x limit +
    the highest of its frozen fees rounded up once, less the same rule applied to what has filled."""
    fee = Decimal(max(o.maker_fee_bps, o.taker_fee_bps))

    def reserve(tokens: int) -> Decimal:
        return (Decimal(tokens) * o.price / 1_000_000 * (10_000 + fee) / 10_000).quantize(
            Decimal("0.01"), rounding=ROUND_CEILING
        )

    assert o.reserved == reserve(o.quantity), f"order {o.pk} reserved {o.reserved}, the rule says {reserve(o.quantity)}"
    return max(o.reserved - reserve(o.filled_quantity), Decimal("0"))


def _assert_usage_invariants() -> None:
    """No usage event counted twice; settled contracts released their escrow exactly."""
    from metering.models import LedgerEntry, Settlement, UsageEvent

    keys = list(UsageEvent.objects.values_list("provider_id", "event_id"))
    assert len(keys) == len(set(keys)), "a usage event is stored twice"
    # Each settled pair's usage is counted exactly once: delivered on a contract or overage.
    usage: dict[tuple[int, int, int], int] = {}
    for inst, buyer, provider, billable in UsageEvent.objects.values_list(
        "instrument_id", "buyer_id", "provider_id", "billable_tokens"
    ):
        usage[(inst, buyer, provider)] = usage.get((inst, buyer, provider), 0) + billable
    counted: dict[tuple[int, int, int], int] = {}
    for s in Settlement.objects.select_related("trade", "transaction"):
        t = s.trade
        pair = (t.instrument_id, t.buyer_id, t.seller_id)
        counted[pair] = counted.get(pair, 0) + s.delivered_tokens + s.overage_tokens
        assert s.delivered_tokens + s.unused_tokens == t.quantity, f"settlement of {t.pk} misreads the quantity"
        assert s.value + s.buyer_fee + s.refund == t.buyer_escrow, f"settlement of {t.pk} does not use its escrow"
        assert s.provider_payout + s.seller_fee == s.value
        assert s.transaction.key == f"settle:{t.pk}"
        escrow_legs = LedgerEntry.objects.filter(transaction=s.transaction, account__kind="escrow")
        assert [e.amount for e in escrow_legs] == [-t.buyer_escrow], f"escrow of settled contract {t.pk} not released"
    for pair, tokens in counted.items():
        assert tokens == usage.get(pair, 0), f"pair {pair}: settled {tokens} tokens, usage {usage.get(pair, 0)}"
