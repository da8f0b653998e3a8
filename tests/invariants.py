"""The invariants of PRODUCT.md §8, recomputed from first principles after every scenario.

Nothing derived that the database stores is trusted: balances, `balance_after`, an order's
`reserve_per_lot` and `filled_quantity`, a trade's `buyer_escrow`, `buyer`/`seller`, an event's
`billable_tokens` and a settlement's figures are all recomputed here from the raw facts (ledger
entry amounts; order quantity, limit and lot; trade price, quantity and who was the aggressor;
an event's raw token counts and its tier's weights) with this module's own copy of the
documented rules (README "Money", "Orders, escrow and matching", "Usage and settlement"). It
imports no production rule (metering.money, metering.settlement, metering.usage), so a bug
there cannot hide itself.

What is checked:
- ledger: every transaction sums to zero (each one, not only in total); every account's balance
  is the sum of its entries; each entry's `balance_after` is the running sum in entry (id) order;
  no participant account is ever negative, now or after any entry;
- orders and trades: filled <= quantity and filled == the sum of the order's trades; the
  status agrees with the fill; every trade is within both limits, on the sell's hardware and
  that hardware accepted by the buy, between two different accounts (taken from the orders, not
  the trade's own buyer/seller columns), with the fee terms of the maker/taker rule;
- escrow: each buyer's escrow balance equals the open commitments: every live buy order's
  reservation for its remaining quantity (`order_reservation`) plus the contract escrow of every
  unsettled trade (`contract_escrow`); each withdrawal hold equals the pending withdrawals;
- usage: no (provider, event_id) twice; each event's billable tokens from its raw counts;
  nothing links an event to a settlement, so "no event counted twice" is checked per pair
  (instrument = delivery period, buyer, provider): the pair's recomputed usage is allocated to
  its contracts oldest first and each settlement's delivered/unused/overage must be that
  allocation, so a fully settled pair accounts for its usage exactly once; each settlement's
  money and ledger legs are recomputed from the allocation;
- the continuous book is not crossed once matching is idle.

"Idle" is read from the database, not from the broker: an instrument is idle when none of its
live orders has `pending_match` set. Placing an order sets it and enqueues matching; the matcher
clears it in the batch that processes the order, and the call auction and a halt leave new
orders pending (they are not matched yet). So an instrument with a pending order is one whose
matching has been enqueued but not run (in unit tests `_matching_queue` records the enqueue,
which happens on commit: inside a `db` test only when on-commit callbacks are captured): a test
that placed crossing orders without calling the matcher is not idle and its book is not checked.
On an idle instrument no resting buy may be at or above a resting sell on hardware it accepts,
whoever owns them: self-trade prevention cancels the taker, so even one account's own orders
never rest crossed.

On PostgreSQL the check reads one snapshot (REPEATABLE READ) when it is not already inside a
transaction, so real workers committing beside it cannot show it half a batch.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

from django.conf import settings
from django.db import connection, transaction

from marketplace.models import Instrument, Order, Tier, Trade
from metering.models import FundingRequest, LedgerAccount, LedgerEntry, Settlement, UsageEvent

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
PER_MTOK = 1_000_000
BPS = Decimal(10_000)
LIVE = ("open", "partially_filled")


# The documented money rules, written again here on purpose (see the module docstring).


def _ceil_cent(x: Decimal) -> Decimal:
    return x.quantize(CENT, rounding=ROUND_CEILING)


def _half_even_cent(x: Decimal) -> Decimal:
    return x.quantize(CENT, rounding=ROUND_HALF_EVEN)


def order_reservation(*, remaining: int, lot_size: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """Escrow a live buy order holds for its unfilled quantity (the one swappable rule).

    Today's rule: per lot, the lot's value at the limit rounded up to the cent, plus the highest
    fee on that value rounded up to the cent; times the open lots.
    """
    lot_value = _ceil_cent(Decimal(lot_size) * price / PER_MTOK)
    per_lot = lot_value + _ceil_cent(lot_value * max_fee_bps / BPS)
    return per_lot * (remaining // lot_size)


def contract_escrow(*, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """Escrow a contract holds until settlement: full value plus the buyer's fee, each rounded up."""
    value = _ceil_cent(Decimal(quantity) * price / PER_MTOK)
    return value + _ceil_cent(value * fee_bps / BPS)


def trade_fee_bps(*, aggressor: str) -> tuple[int, int]:
    """(buyer bps, seller bps): the maker pays the maker rate, the aggressor the taker rate."""
    maker, taker = settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS
    return (taker, maker) if aggressor == "buy" else (maker, taker)


def billable_tokens(*, prompt: int, cached: int, completion: int, tier: Tier) -> int:
    """Non-cached input + weighted cached input + weighted output, half-even to a whole token."""
    exact = (
        Decimal(prompt - cached)
        + Decimal(cached) * tier.cached_input_weight
        + Decimal(completion) * tier.output_token_weight
    )
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def _fail(message: str) -> None:
    raise AssertionError(message)


def assert_invariants() -> None:
    """Raise AssertionError naming the first broken invariant of the current database."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _check_all()
    else:
        _check_all()


def _check_all() -> None:
    balances = _check_ledger()
    orders = {o.pk: o for o in Order.objects.select_related("instrument", "hardware")}
    trades = list(Trade.objects.select_related("hardware").order_by("instrument_id", "match_sequence", "pk"))
    _check_orders_and_trades(orders, trades)
    _check_books(orders)
    settled = set(Settlement.objects.values_list("trade_id", flat=True))
    _check_escrow(orders, trades, settled, balances)
    _check_withdrawal_holds(balances)
    _check_usage_and_settlements(orders, trades)


def _check_ledger() -> dict[int, Decimal]:
    """Per-transaction zero sums, balances and running balances; returns recomputed balances."""
    # Summed in Python: SQLite SUM() of decimals is a float sum, the rows themselves are exact.
    per_txn: dict[int, Decimal] = defaultdict(Decimal)
    running: dict[int, Decimal] = defaultdict(Decimal)
    accounts = {la.pk: la for la in LedgerAccount.objects.all()}
    for pk, txn_id, account_id, amount, after in (
        LedgerEntry.objects.order_by("id")
        .values_list("id", "transaction_id", "account_id", "amount", "balance_after")
        .iterator()
    ):
        per_txn[txn_id] += amount
        running[account_id] += amount
        la = accounts[account_id]
        if after is None or after != running[account_id]:
            _fail(
                f"entry {pk} on {la}: balance_after {after} but the running sum of its entries is {running[account_id]}"
            )
        if not la.is_system and running[account_id] < 0:
            _fail(f"{la} is negative ({running[account_id]}) after entry {pk}")
    for txn_id, total in per_txn.items():
        if total != 0:
            _fail(f"ledger transaction {txn_id} does not sum to zero (sum {total})")
    for la in accounts.values():
        if la.balance != running.get(la.pk, ZERO):
            _fail(f"{la} balance {la.balance} != sum of its entries {running.get(la.pk, ZERO)}")
        if not la.is_system and la.balance < 0:
            _fail(f"{la} is negative ({la.balance})")
    return dict(running)


def _check_orders_and_trades(orders: dict[int, Order], trades: list[Trade]) -> None:
    from pricing.models import CallAuction

    auction_clears = dict(
        CallAuction.objects.filter(status=CallAuction.Status.CLEARED).values_list("instrument_id", "cleared_at")
    )
    fills: dict[int, int] = defaultdict(int)
    for t in trades:
        buy, sell = orders[t.buy_order_id], orders[t.sell_order_id]
        if buy.side != "buy" or sell.side != "sell":
            _fail(f"trade {t.pk}: buy order {buy.pk} is a {buy.side}, sell order {sell.pk} is a {sell.side}")
        if not (t.instrument_id == buy.instrument_id == sell.instrument_id):
            _fail(f"trade {t.pk} and its orders are on different instruments")
        if buy.account_id == sell.account_id:
            _fail(f"trade {t.pk} is a self-trade: both orders belong to account {buy.account_id}")
        if (t.buyer_id, t.seller_id) != (buy.account_id, sell.account_id):
            _fail(f"trade {t.pk}: buyer/seller {t.buyer_id}/{t.seller_id} are not its orders' accounts")
        if not (sell.price <= t.price <= buy.price):
            _fail(f"trade {t.pk} at {t.price} is outside the limits (buy {buy.price}, sell {sell.price})")
        if t.hardware_id != sell.hardware_id:
            _fail(f"trade {t.pk} is not on its sell order's hardware")
        if buy.allowed_hardware and sell.hardware.code not in buy.allowed_hardware:
            _fail(f"trade {t.pk} breaks the hardware rule: {sell.hardware.code} not in {buy.allowed_hardware}")
        if t.quantity <= 0 or t.quantity % buy.instrument.lot_size:
            _fail(f"trade {t.pk}: quantity {t.quantity} is not a positive number of lots")
        # The taker is the order processed later, i.e. the higher sequence number; in a call
        # auction no one rests first and the later arrival (higher id) counts as the taker (an
        # order partly filled there is sequenced only later, by continuous matching).
        if t.executed_at == auction_clears.get(t.instrument_id) or None in (buy.sequence, sell.sequence):
            aggressor = "buy" if buy.pk > sell.pk else "sell"
        else:
            aggressor = "buy" if buy.sequence > sell.sequence else "sell"
        if t.aggressor_side != aggressor:
            _fail(f"trade {t.pk}: aggressor {t.aggressor_side} but the later order is the {aggressor}")
        if (t.buyer_fee_bps, t.seller_fee_bps) != trade_fee_bps(aggressor=aggressor):
            _fail(f"trade {t.pk}: fees {t.buyer_fee_bps}/{t.seller_fee_bps} bps break the maker/taker rule")
        fills[buy.pk] += t.quantity
        fills[sell.pk] += t.quantity
    for o in orders.values():
        if o.filled_quantity > o.quantity:
            _fail(f"order {o.pk}: filled {o.filled_quantity} > quantity {o.quantity}")
        if o.filled_quantity != fills.get(o.pk, 0):
            _fail(f"order {o.pk}: filled {o.filled_quantity} but its trades sum to {fills.get(o.pk, 0)}")
        complete = o.filled_quantity == o.quantity
        if complete != (o.status == "filled"):
            _fail(f"order {o.pk} is {o.status} with {o.filled_quantity} of {o.quantity} filled")
        if (o.status == "open" and o.filled_quantity) or (o.status == "partially_filled" and not o.filled_quantity):
            _fail(f"order {o.pk} is {o.status} with {o.filled_quantity} filled")


def _check_books(orders: dict[int, Order]) -> None:
    """No crossed continuous book on an idle instrument (see the module docstring)."""
    busy = {o.instrument_id for o in orders.values() if o.status in LIVE and o.pending_match}
    asks: dict[int, dict[str, Decimal]] = defaultdict(dict)  # instrument -> hardware -> best ask
    bids: dict[int, list[Order]] = defaultdict(list)
    for o in orders.values():
        if o.status not in LIVE or o.pending_match or o.instrument_id in busy:
            continue
        if o.side == "sell":
            best = asks[o.instrument_id]
            best[o.hardware.code] = min(best.get(o.hardware.code, o.price), o.price)
        else:
            bids[o.instrument_id].append(o)
    for instrument_id, buys in bids.items():
        for b in buys:
            for code, ask in asks[instrument_id].items():
                if ask <= b.price and (not b.allowed_hardware or code in b.allowed_hardware):
                    _fail(
                        f"idle book of instrument {instrument_id} is crossed: buy {b.pk} at {b.price} >= ask {ask} on {code}"
                    )


def _check_escrow(
    orders: dict[int, Order], trades: list[Trade], settled: set[int], balances: dict[int, Decimal]
) -> None:
    max_fee = max(settings.MAKER_FEE_BPS, settings.TAKER_FEE_BPS)
    expected: dict[int, Decimal] = defaultdict(Decimal)
    for o in orders.values():
        if o.side == "buy" and o.status in LIVE:
            expected[o.account_id] += order_reservation(
                remaining=o.quantity - o.filled_quantity,
                lot_size=o.instrument.lot_size,
                price=o.price,
                max_fee_bps=max_fee,
            )
    for t in trades:  # settled or not: a settlement releases exactly what the contract held
        escrow = contract_escrow(
            quantity=t.quantity, price=t.price, fee_bps=trade_fee_bps(aggressor=t.aggressor_side)[0]
        )
        if t.buyer_escrow != escrow:
            _fail(f"trade {t.pk} says it holds {t.buyer_escrow} in escrow, the contract rule says {escrow}")
        if t.pk not in settled:
            expected[orders[t.buy_order_id].account_id] += escrow
    actual: dict[int, Decimal] = {}
    for la in LedgerAccount.objects.filter(kind="escrow", owner__isnull=False):
        actual[la.owner_id] = balances.get(la.pk, ZERO)
    for owner in set(expected) | set(actual):
        if actual.get(owner, ZERO) != expected.get(owner, ZERO):
            _fail(
                f"escrow of account {owner} is {actual.get(owner, ZERO)}, open commitments are {expected.get(owner, ZERO)}"
            )


def _check_withdrawal_holds(balances: dict[int, Decimal]) -> None:
    """Each account's withdrawal hold is exactly its pending withdrawal requests."""
    expected: dict[int, Decimal] = defaultdict(Decimal)
    for account_id, amount in FundingRequest.objects.filter(kind="withdrawal", status="pending").values_list(
        "account_id", "amount"
    ):
        expected[account_id] += amount
    actual = {
        la.owner_id: balances.get(la.pk, ZERO)
        for la in LedgerAccount.objects.filter(kind="withdrawal_hold", owner__isnull=False)
    }
    for owner in set(expected) | set(actual):
        if actual.get(owner, ZERO) != expected.get(owner, ZERO):
            _fail(
                f"withdrawal hold of account {owner} is {actual.get(owner, ZERO)}, "
                f"pending withdrawals are {expected.get(owner, ZERO)}"
            )


def _check_usage_and_settlements(orders: dict[int, Order], trades: list[Trade]) -> None:
    tiers = {i.pk: i.tier for i in Instrument.objects.select_related("tier")}
    seen: set[tuple[int, str]] = set()
    usage: dict[tuple[int, int, int], int] = defaultdict(int)
    for e in UsageEvent.objects.order_by("pk").iterator():
        key = (e.provider_id, e.event_id)
        if key in seen:
            _fail(f"usage event {e.event_id!r} of provider {e.provider_id} is stored twice")
        seen.add(key)
        billable = billable_tokens(
            prompt=e.input_tokens, cached=e.cached_input_tokens, completion=e.output_tokens, tier=tiers[e.instrument_id]
        )
        if e.billable_tokens != billable:
            _fail(f"usage event {e.pk}: billable_tokens {e.billable_tokens}, its raw counts give {billable}")
        usage[(e.instrument_id, e.buyer_id, e.provider_id)] += billable

    settlements = {s.trade_id: s for s in Settlement.objects.all()}
    by_pair: dict[tuple[int, int, int], list[Trade]] = defaultdict(list)
    for t in trades:  # already in match_sequence order per instrument: oldest first
        by_pair[(t.instrument_id, orders[t.buy_order_id].account_id, orders[t.sell_order_id].account_id)].append(t)
    fees_ids = set(LedgerAccount.objects.filter(kind="fees", owner__isnull=True).values_list("pk", flat=True))
    ledger_of = {
        (owner, kind): pk
        for pk, owner, kind in LedgerAccount.objects.filter(owner__isnull=False).values_list("pk", "owner_id", "kind")
    }
    legs_of: dict[int, dict[int, Decimal]] = defaultdict(dict)
    for txn_id, account_id, amount in LedgerEntry.objects.filter(
        transaction_id__in=[s.transaction_id for s in settlements.values()]
    ).values_list("transaction_id", "account_id", "amount"):
        legs_of[txn_id][account_id] = legs_of[txn_id].get(account_id, ZERO) + amount

    for pair, contracts in by_pair.items():
        done = [t for t in contracts if t.pk in settlements]
        if not done:
            continue
        instrument_id, buyer, provider = pair
        left = usage.get(pair, 0)
        counted = 0
        for i, t in enumerate(contracts):
            delivered = min(t.quantity, left)
            left -= delivered
            s = settlements.get(t.pk)
            if s is None:
                continue
            overage = left if i == len(contracts) - 1 else 0
            if (s.delivered_tokens, s.unused_tokens, s.overage_tokens) != (delivered, t.quantity - delivered, overage):
                _fail(
                    f"settlement of trade {t.pk}: delivered/unused/overage {s.delivered_tokens}/{s.unused_tokens}/"
                    f"{s.overage_tokens}, the pair's usage allocated oldest first gives {delivered}/"
                    f"{t.quantity - delivered}/{overage}"
                )
            counted += s.delivered_tokens + s.overage_tokens
            _check_settlement_money(
                t, s, tiers[instrument_id], buyer, provider, ledger_of, fees_ids, legs_of[s.transaction_id]
            )
        if counted > usage.get(pair, 0) or (len(done) == len(contracts) and counted != usage.get(pair, 0)):
            _fail(f"pair {pair}: settlements count {counted} tokens, its usage events {usage.get(pair, 0)}")


def _check_settlement_money(
    t: Trade,
    s: Settlement,
    tier: Tier,
    buyer: int,
    provider: int,
    ledger_of: dict[tuple[int, str], int],
    fees_ids: set[int],
    legs: dict[int, Decimal],
) -> None:
    unused = t.quantity - s.delivered_tokens
    value = _half_even_cent((Decimal(s.delivered_tokens) + tier.unused_capacity_share * unused) * t.price / PER_MTOK)
    buyer_bps, seller_bps = trade_fee_bps(aggressor=t.aggressor_side)
    buyer_fee = _half_even_cent(value * buyer_bps / BPS)
    seller_fee = _half_even_cent(value * seller_bps / BPS)
    escrow = contract_escrow(quantity=t.quantity, price=t.price, fee_bps=buyer_bps)
    refund = escrow - value - buyer_fee
    want = (value, buyer_fee, seller_fee, value - seller_fee, refund)
    got = (s.value, s.buyer_fee, s.seller_fee, s.provider_payout, s.refund)
    if got != want:
        _fail(f"settlement of trade {t.pk}: value/fees/payout/refund {got}, the rules give {want}")
    if refund < 0:
        _fail(f"settlement of trade {t.pk}: escrow {escrow} does not cover {value} + {buyer_fee}")
    expected: dict[int, Decimal] = defaultdict(Decimal)
    expected[ledger_of.get((buyer, "escrow"), -1)] -= escrow
    expected[ledger_of.get((buyer, "available"), -2)] += refund
    expected[ledger_of.get((provider, "available"), -3)] += value - seller_fee
    fee_legs = {a: amt for a, amt in legs.items() if a in fees_ids}
    expected_fees = buyer_fee + seller_fee
    rest = {a: amt for a, amt in legs.items() if a not in fees_ids}
    if {a: amt for a, amt in expected.items() if amt != 0} != rest or sum(fee_legs.values(), ZERO) != expected_fees:
        _fail(
            f"settlement of trade {t.pk}: its ledger legs {legs} are not escrow -{escrow}, refund {refund}, "
            f"payout {value - seller_fee}, fees {expected_fees}"
        )
