"""Benchmark: clearing a day-ahead call auction of 100,000 orders.

Two figures, each beside a ceiling measured in the same run:
1. in memory: pricing.auction.clear() (price discovery over every candidate price plus the
   priority allocation) vs sorting the same orders by price-time priority, the least any
   clearing must do;
2. in the database (PostgreSQL): pricing.auction_runs.auction_clear() - load, clear, write the
   trades, order updates and escrow releases in one transaction - vs loading the same order
   rows and sorting them.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_h3 .venv/bin/python bench/auction.py
    .venv/bin/python bench/auction.py --orders 20000 --memory-only

The order flow is synthetic but shaped like a day-ahead book: prices around 2.00 on a 0.01
tick (about 60 distinct limits), six hardware types, 30% of buys restricted to one or two of
them, 1% of orders from 5 accounts that both buy and sell (self-trade prevention applies;
--dual-share/--dual-accounts raise it). Seeded; bounded.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

HW = ["h100", "h200", "b200", "mi300x", "tpu-v7", "ascend-910c"]


def synthetic(n: int, seed: int = 7, dual_share: float = 0.01, dual_accounts: int = 5):
    from pricing.auction import BUY, SELL, AuctionOrder

    rnd = random.Random(seed)
    buyers, sellers, dual = range(1, 501), range(1001, 1201), range(2001, 2001 + dual_accounts)
    orders = []
    for i in range(1, n + 1):
        side = BUY if rnd.random() < 0.5 else SELL
        acct = rnd.choice(dual) if rnd.random() < dual_share else rnd.choice(buyers if side == BUY else sellers)
        # Buyers bid a little below 2.00 on average, sellers ask a little above: a real cross.
        centre = 198 if side == BUY else 202
        price = (Decimal(max(1, int(rnd.gauss(centre, 10)))) / 100).quantize(Decimal("0.01"))
        qty = rnd.randint(1, 20) * 1_000_000
        if side == BUY:
            r = rnd.random()
            allowed = frozenset() if r < 0.7 else frozenset(rnd.sample(HW, 1 if r < 0.9 else 2))
            orders.append(AuctionOrder(i, i, acct, BUY, price, qty, None, allowed))
        else:
            orders.append(AuctionOrder(i, i, acct, SELL, price, qty, rnd.choice(HW)))
    return orders


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_memory(n: int, repeat: int) -> None:
    from pricing.auction import BUY, clear

    orders = synthetic(n)
    print(f"[memory] {n:,} orders, median of {repeat}", flush=True)

    def ceiling():
        return sorted(orders, key=lambda o: ((-o.price if o.side == BUY else o.price), o.seq))

    t_sort, _ = timed(ceiling, repeat)
    t_clear, result = timed(lambda: clear(orders, reference_price=Decimal("2.00")), repeat)
    print(
        f"[memory] clearing price {result.price}, volume {result.volume:,} tokens, imbalance {result.imbalance:,}, "
        f"{len(result.fills):,} fills, {result.candidates} candidate prices"
    )
    print(f"[memory] ceiling: sort by price-time priority   {t_sort * 1000:9.1f} ms")
    print(
        f"[memory] clear (discovery + allocation)        {t_clear * 1000:9.1f} ms   = {t_clear / t_sort:.1f}x the sort"
    )


def bench_database(n: int) -> None:
    import django

    django.setup()
    import datetime as dt
    from collections import defaultdict
    from io import StringIO

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from marketplace.models import Account, Hardware, Order, Region, Tier
    from marketplace.services import instrument_create
    from metering import money
    from metering.ledger import ledger_account_ids, ledger_accounts_ensure, ledger_post
    from metering.models import LedgerAccount, LedgerTransaction
    from metering.money import max_fee_bps
    from metering.services import funds_deposit
    from pricing.auction_runs import auction_clear, auction_open
    from pricing.models import CallAuction

    if not settings.IS_POSTGRES:
        print("[db] skipped: set DATABASE_URL=postgres://... for the database figure")
        return
    print("[db] migrate + catalog", flush=True)
    call_command("migrate", verbosity=0)
    call_command("seed_catalog", stdout=StringIO())
    day = timezone.now().date() + dt.timedelta(days=300 + random.randint(0, 5000))
    inst = instrument_create(
        tier=Tier.objects.get(code="standard"), region=Region.objects.get(code="cn-west-1"), day=day
    )
    orders = synthetic(n)
    hw_ids = dict(Hardware.objects.values_list("code", "id"))
    print(f"[db] {n:,} orders on {inst.symbol}: accounts, escrow, bulk insert", flush=True)
    t0 = time.perf_counter()
    accounts: dict[int, Account] = {}
    for acct_id in sorted({o.account_id for o in orders}):
        a, _ = Account.objects.get_or_create(
            slug=f"bench-auction-{acct_id}",
            defaults={"name": f"bench auction {acct_id}", "is_buyer": True, "is_provider": True},
        )
        ledger_accounts_ensure(account=a)
        accounts[acct_id] = a
    reserve_total: dict[int, Decimal] = defaultdict(Decimal)
    rows = []
    for o in orders:
        reserve = Decimal(0)
        if o.side == "buy":
            reserve = money.reserve(quantity=o.quantity, price=o.price, max_fee_bps=max_fee_bps())
            reserve_total[accounts[o.account_id].pk] += reserve
        rows.append(
            Order(
                account=accounts[o.account_id],
                instrument=inst,
                side=o.side,
                quantity=o.quantity,
                price=o.price,
                hardware_id=hw_ids[o.hardware] if o.hardware else None,
                allowed_hardware=sorted(o.allowed),
                # Collected, not yet sequenced: the clear numbers those it fills, in id order
                # (bulk_create keeps the list's order, which is the stream's).
                sequence=None,
                allowed_hardware_ids=sorted(hw_ids[c] for c in o.allowed),
                maker_fee_bps=money.fee_bps(maker=True),
                taker_fee_bps=money.fee_bps(maker=False),
            )
        )
    with transaction.atomic():
        escrow = ledger_account_ids(reserve_total, LedgerAccount.Kind.ESCROW)
        available = ledger_account_ids(reserve_total, LedgerAccount.Kind.AVAILABLE)
        for acct_pk, total in reserve_total.items():
            funds_deposit(account=Account.objects.get(pk=acct_pk), amount=total, reason="bench auction")
            ledger_post(
                key=f"bench-auction-reserve:{inst.pk}:{acct_pk}",
                kind=LedgerTransaction.Kind.ESCROW_RESERVE,
                legs=[(available[acct_pk], -total), (escrow[acct_pk], total)],
            )
        Order.objects.bulk_create(rows, batch_size=5000)
        auction_open(instrument=inst)
    with connection.cursor() as cur:
        cur.execute("ANALYZE marketplace_order")
    print(f"[db] setup {time.perf_counter() - t0:.1f} s", flush=True)

    def ceiling():
        live = list(
            Order.objects.filter(instrument=inst, status__in=["open", "partially_filled"]).values(
                "id",
                "sequence",
                "account_id",
                "side",
                "price",
                "quantity",
                "filled_quantity",
                "hardware_id",
                "allowed_hardware",
                "time_in_force",
                "pending_match",
                "maker_fee_bps",
                "taker_fee_bps",
                "status",
            )
        )
        return sorted(live, key=lambda r: ((-r["price"] if r["side"] == "buy" else r["price"]), r["id"]))

    t_ceiling, _ = timed(ceiling, 3)
    t0 = time.perf_counter()
    result = auction_clear(instrument_id=inst.pk)
    t_clear = time.perf_counter() - t0
    assert CallAuction.objects.get(pk=result.pk).status == "cleared"
    print(
        f"[db] clearing price {result.clearing_price}, volume {result.volume:,}, {result.trades_count:,} trades, "
        f"{result.orders_count:,} orders"
    )
    print(f"[db] ceiling: load the {n:,} order rows + sort     {t_ceiling * 1000:9.1f} ms")
    print(
        f"[db] auction_clear (load, clear, write all)      {t_clear * 1000:9.1f} ms   = {t_clear / t_ceiling:.1f}x the ceiling"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()
    if not 2 <= args.orders <= 1_000_000:
        parser.error("--orders must be between 2 and 1,000,000")
    sys.setrecursionlimit(10000)
    if args.memory_only:
        import django

        django.setup()
    bench_memory(args.orders, args.repeat)
    if not args.memory_only:
        bench_database(args.orders)


if __name__ == "__main__":
    main()
