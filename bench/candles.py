"""Benchmark: OHLCV candles over 1,000,000 trades on PostgreSQL.

Each candle query (pricing.selectors.instrument_candles: GROUP BY a truncated time, then the
open/close prices by match sequence) is timed beside a ceiling measured in the same run on the
same rows: a plain `SELECT count(*), sum(quantity)` over the same instrument and time range,
which reads exactly the rows a candle query must read and aggregates nothing per bucket.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_h3 .venv/bin/python bench/candles.py
    ... bench/candles.py --trades 200000 --repeat 3

The trades (one instrument, spread over 30 days, a random-walk price) are generated inside
PostgreSQL with generate_series, once; later runs reuse them (--rebuild makes them again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

SPAN_DAYS = 30


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    if not 1_000 <= args.trades <= 10_000_000:
        parser.error("--trades must be between 1,000 and 10,000,000")

    import django

    django.setup()
    from io import StringIO

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from marketplace.models import Account, Hardware, Order, Region, Tier, Trade
    from marketplace.services import instrument_create
    from pricing.selectors import instrument_candles

    if not settings.IS_POSTGRES:
        sys.exit("bench/candles.py measures PostgreSQL: set DATABASE_URL=postgres://...")

    print("migrate + catalog", flush=True)
    call_command("migrate", verbosity=0)
    call_command("seed_catalog", stdout=StringIO())
    # A delivery day far ahead: its own book, untouched by anything else using the database.
    day = dt.date(2099, 1, 1)
    inst = instrument_create(
        tier=Tier.objects.get(code="frontier"), region=Region.objects.get(code="us-east-1"), day=day
    )
    end = timezone.now().replace(second=0, microsecond=0)
    start = end - dt.timedelta(days=SPAN_DAYS)
    have = Trade.objects.filter(instrument=inst).count()
    if have != args.trades or args.rebuild:
        print(f"generating {args.trades:,} trades over {SPAN_DAYS} days in PostgreSQL ...", flush=True)
        t0 = time.perf_counter()
        Trade.objects.filter(instrument=inst).delete()
        Order.objects.filter(instrument=inst).delete()
        buyer, _ = Account.objects.get_or_create(slug="bench-candles-buyer", defaults={"name": "bench candles buyer"})
        seller, _ = Account.objects.get_or_create(
            slug="bench-candles-seller", defaults={"name": "bench candles seller", "is_provider": True}
        )
        h100 = Hardware.objects.get(code="h100")
        buy = Order.objects.create(
            account=buyer,
            instrument=inst,
            side="buy",
            quantity=10**15,
            price=100,
            sequence=1,
            pending_match=False,
            status="cancelled",
        )
        sell = Order.objects.create(
            account=seller,
            instrument=inst,
            side="sell",
            quantity=10**15,
            price=1,
            sequence=2,
            hardware=h100,
            pending_match=False,
            status="cancelled",
        )
        step_us = SPAN_DAYS * 86_400 * 1_000_000 // args.trades
        with connection.cursor() as cur:
            cur.execute("SELECT setseed(0.42)")
            cur.execute(
                """
                INSERT INTO marketplace_trade (instrument_id, buy_order_id, sell_order_id, buyer_id, seller_id,
                    hardware_id, quantity, price, aggressor_side, match_sequence, buyer_fee_bps, seller_fee_bps,
                    buyer_escrow, executed_at)
                SELECT %s, %s, %s, %s, %s, %s,
                       (1 + (random() * 9)::int) * 1000000,
                       round((8 + 1.5 * sin(i / 5000.0) + 0.4 * sin(i / 97.0) + random() * 0.2)::numeric, 2),
                       CASE WHEN random() < 0.5 THEN 'buy' ELSE 'sell' END,
                       i, 5, 10, 0,
                       %s::timestamptz + (i::bigint * %s::bigint) * interval '1 microsecond'
                FROM generate_series(1, %s) AS i
                """,
                [inst.pk, buy.pk, sell.pk, buyer.pk, seller.pk, h100.pk, start, step_us, args.trades],
            )
            cur.execute("ANALYZE marketplace_trade")
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)
    else:
        print(f"reusing {have:,} trades", flush=True)

    first, last = (
        Trade.objects.filter(instrument=inst).order_by("executed_at").values_list("executed_at", flat=True).first(),
        Trade.objects.filter(instrument=inst).order_by("-executed_at").values_list("executed_at", flat=True).first(),
    )
    end = last + dt.timedelta(seconds=1)
    cases = [
        ("1d over all 30 days", "1d", first, end),
        ("1h over all 30 days", "1h", first, end),
        ("1m over the last day", "1m", end - dt.timedelta(days=1), end),
    ]
    print(f"\n{'query':28} {'buckets':>8} {'rows':>10} {'ceiling ms':>11} {'candles ms':>11} {'ratio':>7}")
    for label, interval, lo, hi in cases:

        def ceiling(lo=lo, hi=hi):
            with connection.cursor() as cur:
                cur.execute(
                    "SELECT count(*), sum(quantity) FROM marketplace_trade "
                    "WHERE instrument_id = %s AND executed_at >= %s AND executed_at < %s",
                    [inst.pk, lo, hi],
                )
                return cur.fetchone()

        def candles(interval=interval, lo=lo, hi=hi):
            return instrument_candles(instrument=inst, interval=interval, start=lo, end=hi, now=hi)

        t_ceiling, (rows, _) = timed(ceiling, args.repeat)
        t_candles, result = timed(candles, args.repeat)
        assert sum(c.volume for c in result) > 0
        print(
            f"{label:28} {len(result):>8,} {rows:>10,} {t_ceiling * 1000:>11.1f} {t_candles * 1000:>11.1f} "
            f"{t_candles / t_ceiling:>6.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
