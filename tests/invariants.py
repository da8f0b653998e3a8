"""The invariants of PRODUCT.md §8, recomputed from first principles after every scenario.

Nothing derived that the database stores is trusted: balances, `balance_after`, an order's
`filled_quantity`, a trade's `buyer_escrow`, fee rates and tier terms, `buyer`/`seller`, an
event's `billable_tokens` and a settlement's figures are all recomputed here from the raw facts
(ledger entry amounts; order quantity, limit and the terms frozen on it at placement; trade
price, quantity and who was the aggressor; an event's raw token counts and the weights frozen
on its pair's oldest contract) with this module's own copy of the
documented rules (README "Money", "Orders, escrow and matching", "Usage and settlement"). It
imports no production rule (metering.money, metering.settlement, metering.usage), so a bug
there cannot hide itself.

What is checked:
- ledger: every transaction sums to zero (each one, not only in total); every account's balance
  is the sum of its entries; each entry's `balance_after` is the running sum in entry (id) order;
  no participant account is ever negative, now or after any entry;
- orders and trades: filled <= quantity and filled == the sum of the order's trades; the
  status agrees with the fill; every trade is within both limits, on the sell's hardware and
  that hardware (by id) accepted by the buy, between two different accounts (taken from the
  orders, not the trade's own buyer/seller columns), with each side's own order's frozen maker or
  taker rate and the resting (maker) order's frozen tier terms;
- escrow: each buyer's escrow balance equals the open commitments: every live buy order's
  reservation less the reservation of what filled (`order_reservation`) plus the escrow of every
  unsettled trade (`contract_escrow`: what its fill took from the order, at most its full value
  plus fee); each withdrawal hold equals the pending withdrawals;
- usage: no (provider, event_id) twice; each event's billable tokens from its raw counts;
  nothing links an event to a settlement, so "no event counted twice" is checked per pair
  (instrument = delivery period, buyer, provider): the pair's recomputed usage is allocated to
  its contracts oldest first and each settlement's delivered/unused/overage must be that
  allocation, so a fully settled pair accounts for its usage exactly once; each settlement's
  money and ledger legs are recomputed from the allocation, its fees by the running-total rule
  over all the instrument's contracts (`running_fees`);
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

from django.db import connection, transaction

from marketplace.models import Order, Trade
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


def reservation(*, quantity: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """What a buy of `quantity` tokens at limit `price` reserves: quantity x limit plus the
    highest fee on that total, rounded up once to the cent."""
    return _ceil_cent(Decimal(quantity) * price / PER_MTOK * (BPS + max_fee_bps) / BPS)


def order_reservation(*, quantity: int, filled: int, price: Decimal, max_fee_bps: int) -> Decimal:
    """Escrow a live buy order holds: its reservation less the reservation of what filled."""
    if filled >= quantity:
        return ZERO
    kw = {"price": price, "max_fee_bps": max_fee_bps}
    return reservation(quantity=quantity, **kw) - reservation(quantity=filled, **kw)


def contract_escrow(*, order: Order, filled_before: int, quantity: int, price: Decimal, fee_bps: int) -> Decimal:
    """Escrow a contract holds until settlement: what its fill took from the buy order's escrow,
    but never more than its full value plus the buyer's fee rounded up (the rest is released)."""
    kw = {"quantity": order.quantity, "price": order.price, "max_fee_bps": max(order.maker_fee_bps, order.taker_fee_bps)}
    took = order_reservation(filled=filled_before, **kw) - order_reservation(filled=filled_before + quantity, **kw)
    return min(took, _ceil_cent(Decimal(quantity) * price / PER_MTOK * (BPS + fee_bps) / BPS))


def trade_fee_bps(*, buy: Order, sell: Order, aggressor: str) -> tuple[int, int]:
    """(buyer bps, seller bps): each side pays its own order's frozen rate, maker or taker."""
    if aggressor == "buy":
        return buy.taker_fee_bps, sell.maker_fee_bps
    return buy.maker_fee_bps, sell.taker_fee_bps


def running_fees(lines: list[tuple]) -> dict[int, tuple[Decimal, Decimal]]:
    """The running-total fee rule (README "Fees"), for one instrument's contracts oldest first.

    `lines`: (trade id, buyer, seller, exact value, charged value, escrow, buyer bps, seller bps).
    Per account and role, exact fees are summed and the sum rounded half-even; a contract pays
    what the rounded sum rose by plus what earlier ones could not hold, at most its escrow less
    its value (buyer) or its value (seller); what is due after the account's last contract goes
    on its contracts with room left, oldest first."""
    exact: dict[tuple, Decimal] = defaultdict(Decimal)
    charged: dict[tuple, Decimal] = defaultdict(Decimal)
    left: dict[tuple, Decimal] = {}
    order: dict[tuple, list[int]] = defaultdict(list)
    out: dict[int, list[Decimal]] = {}
    for pk, buyer, seller, exact_value, value, escrow, b_bps, s_bps in lines:
        out[pk] = []
        for i, (key, bps, room) in enumerate(((("b", buyer), b_bps, escrow - value), (("s", seller), s_bps, value))):
            exact[key] += exact_value * bps / BPS
            fee = min(max(_half_even_cent(exact[key]) - charged[key], ZERO), max(room, ZERO))
            charged[key] += fee
            left[(i, pk)] = max(room, ZERO) - fee
            order[key].append(pk)
            out[pk].append(fee)
    for key, pks in order.items():
        i = 0 if key[0] == "b" else 1
        due = _half_even_cent(exact[key]) - charged[key]
        for pk in pks:
            add = min(due, left[(i, pk)])
            if add > 0:
                out[pk][i] += add
                due -= add
    return {pk: (fees[0], fees[1]) for pk, fees in out.items()}


def billable_tokens(*, prompt: int, cached: int, completion: int, terms: Trade) -> int:
    """Non-cached input + weighted cached input + weighted output, half-even to a whole token,
    with the weights frozen on the pair's oldest contract."""
    exact = (
        Decimal(prompt - cached)
        + Decimal(cached) * terms.cached_input_weight
        + Decimal(completion) * terms.output_token_weight
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
        if buy.allowed_hardware_ids and sell.hardware_id not in buy.allowed_hardware_ids:
            _fail(f"trade {t.pk} breaks the hardware rule: {sell.hardware_id} not in {buy.allowed_hardware_ids}")
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
        if (t.buyer_fee_bps, t.seller_fee_bps) != trade_fee_bps(buy=buy, sell=sell, aggressor=aggressor):
            _fail(f"trade {t.pk}: fees {t.buyer_fee_bps}/{t.seller_fee_bps} bps break the maker/taker rule")
        maker = sell if aggressor == "buy" else buy
        terms = ("unused_capacity_share", "output_token_weight", "cached_input_weight")
        if any(getattr(t, f) != getattr(maker, f) for f in terms):
            _fail(f"trade {t.pk}: its tier terms are not those frozen on its resting order {maker.pk}")
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
    asks: dict[int, dict[int, Decimal]] = defaultdict(dict)  # instrument -> hardware id -> best ask
    bids: dict[int, list[Order]] = defaultdict(list)
    for o in orders.values():
        if o.status not in LIVE or o.pending_match or o.instrument_id in busy:
            continue
        if o.side == "sell":
            best = asks[o.instrument_id]
            best[o.hardware_id] = min(best.get(o.hardware_id, o.price), o.price)
        else:
            bids[o.instrument_id].append(o)
    for instrument_id, buys in bids.items():
        for b in buys:
            for code, ask in asks[instrument_id].items():
                if ask <= b.price and (not b.allowed_hardware_ids or code in b.allowed_hardware_ids):
                    _fail(
                        f"idle book of instrument {instrument_id} is crossed: buy {b.pk} at {b.price} >= ask {ask} on {code}"
                    )


def _check_escrow(
    orders: dict[int, Order], trades: list[Trade], settled: set[int], balances: dict[int, Decimal]
) -> None:
    expected: dict[int, Decimal] = defaultdict(Decimal)
    for o in orders.values():
        if o.side == "buy" and o.status in LIVE:
            expected[o.account_id] += order_reservation(
                quantity=o.quantity,
                filled=o.filled_quantity,
                price=o.price,
                max_fee_bps=max(o.maker_fee_bps, o.taker_fee_bps),
            )
    filled_before: dict[int, int] = defaultdict(int)  # buy order -> tokens filled by earlier trades
    for t in trades:  # settled or not: a settlement releases exactly what the contract held
        buy, sell = orders[t.buy_order_id], orders[t.sell_order_id]
        escrow = contract_escrow(
            order=buy, filled_before=filled_before[buy.pk], quantity=t.quantity, price=t.price,
            fee_bps=trade_fee_bps(buy=buy, sell=sell, aggressor=t.aggressor_side)[0],
        )  # fmt: skip
        filled_before[buy.pk] += t.quantity
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
    by_pair: dict[tuple[int, int, int], list[Trade]] = defaultdict(list)
    for t in trades:  # already in match_sequence order per instrument: oldest first
        by_pair[(t.instrument_id, orders[t.buy_order_id].account_id, orders[t.sell_order_id].account_id)].append(t)
    seen: set[tuple[int, str]] = set()
    usage: dict[tuple[int, int, int], int] = defaultdict(int)
    for e in UsageEvent.objects.order_by("pk").iterator():
        key = (e.provider_id, e.event_id)
        if key in seen:
            _fail(f"usage event {e.event_id!r} of provider {e.provider_id} is stored twice")
        seen.add(key)
        pair = (e.instrument_id, e.buyer_id, e.provider_id)
        if pair not in by_pair:
            _fail(f"usage event {e.pk} has no contract between its buyer and provider on its instrument")
        billable = billable_tokens(
            prompt=e.input_tokens, cached=e.cached_input_tokens, completion=e.output_tokens, terms=by_pair[pair][0]
        )
        if e.billable_tokens != billable:
            _fail(f"usage event {e.pk}: billable_tokens {e.billable_tokens}, its raw counts give {billable}")
        usage[pair] += billable

    settlements = {s.trade_id: s for s in Settlement.objects.all()}
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

    # Every contract's delivered tokens: its pair's usage allocated oldest first.
    delivered_of: dict[int, int] = {}
    overage_of: dict[int, int] = {}
    for pair, contracts in by_pair.items():
        left = usage.get(pair, 0)
        for t in contracts:
            delivered_of[t.pk] = min(t.quantity, left)
            left -= delivered_of[t.pk]
            overage_of[t.pk] = 0
        overage_of[contracts[-1].pk] = left
    # Values, and fees by the running-total rule over each instrument that has settlements.
    settled_instruments = {t.instrument_id for t in trades if t.pk in settlements}
    values: dict[int, Decimal] = {}
    lines: dict[int, list[tuple]] = defaultdict(list)
    for t in trades:
        if t.instrument_id not in settled_instruments:
            continue
        d = delivered_of[t.pk]
        exact = (Decimal(d) + t.unused_capacity_share * (t.quantity - d)) * t.price / PER_MTOK
        values[t.pk] = min(_half_even_cent(exact), t.buyer_escrow)
        lines[t.instrument_id].append(
            (t.pk, t.buyer_id, t.seller_id, exact, values[t.pk], t.buyer_escrow, t.buyer_fee_bps, t.seller_fee_bps)
        )
    fees: dict[int, tuple[Decimal, Decimal]] = {}
    for instrument_lines in lines.values():
        fees.update(running_fees(instrument_lines))

    for pair, contracts in by_pair.items():
        done = [t for t in contracts if t.pk in settlements]
        if not done:
            continue
        _, buyer, provider = pair
        counted = 0
        for t in done:
            s = settlements[t.pk]
            delivered, overage = delivered_of[t.pk], overage_of[t.pk]
            if (s.delivered_tokens, s.unused_tokens, s.overage_tokens) != (delivered, t.quantity - delivered, overage):
                _fail(
                    f"settlement of trade {t.pk}: delivered/unused/overage {s.delivered_tokens}/{s.unused_tokens}/"
                    f"{s.overage_tokens}, the pair's usage allocated oldest first gives {delivered}/"
                    f"{t.quantity - delivered}/{overage}"
                )
            counted += s.delivered_tokens + s.overage_tokens
            _check_settlement_money(
                t, s, values[t.pk], fees[t.pk], buyer, provider, ledger_of, fees_ids, legs_of[s.transaction_id]
            )
        if counted > usage.get(pair, 0) or (len(done) == len(contracts) and counted != usage.get(pair, 0)):
            _fail(f"pair {pair}: settlements count {counted} tokens, its usage events {usage.get(pair, 0)}")


def _check_settlement_money(
    t: Trade,
    s: Settlement,
    value: Decimal,
    fees: tuple[Decimal, Decimal],
    buyer: int,
    provider: int,
    ledger_of: dict[tuple[int, str], int],
    fees_ids: set[int],
    legs: dict[int, Decimal],
) -> None:
    buyer_fee, seller_fee = fees
    escrow = t.buyer_escrow  # checked against the escrow rule in _check_escrow
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
