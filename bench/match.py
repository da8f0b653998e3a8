"""Benchmark: continuous matching through the database vs the pure engine in memory.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_h1 .venv/bin/python bench/match.py
    (or `make bench-match` with DATABASE_URL set)

Builds, in its own PostgreSQL database (ciyuan_bench_match on the DATABASE_URL server, dropped
and recreated each run), one instrument with a resting book of 10,000 orders, then records a
stream of 100,000 orders (bulk-inserted as pending with no match sequence, escrow reserved per
buyer, as placement would leave them) and times pricing.matcher.instrument_match until nothing
is pending: lock, sequence, engine on the resident book (read from the table once, then kept in
memory), bulk writes of trades, orders, escrow releases and top of book, one transaction per
batch. It prints the rate of every 10,000 orders, so a rate that falls as the book deepens
shows. The ceiling is the same stream through pricing.engine in memory, in the same run.
Both runs must produce the same trades (checked), and the exchange's invariants must hold
afterwards (checked; --no-check skips it).

The flow is seeded: prices around 1.00 on a 0.01 tick, 1-5 lots, 80% GTC / 8% IOC / 6% FOK /
6% post-only, three hardware types, 30% of buys restricted to one or two, 5% of orders from
accounts that both buy and sell (self-trade prevention applies).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

HW = ["h100", "h200", "b200"]
TIFS = ["gtc"] * 80 + ["ioc"] * 8 + ["fok"] * 6 + ["post_only"] * 6
LOT = 1_000_000


def bench_database_url(base: str, name: str) -> tuple[str, str]:
    """(URL of the bench database, URL of the server's maintenance database)."""
    parts = urlsplit(base)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        sys.exit("bench/match.py needs PostgreSQL: DATABASE_URL=postgres://user@host:5432/dbname")
    return urlunsplit(parts._replace(path=f"/{name}")), urlunsplit(parts._replace(path="/postgres"))


def recreate_database(maintenance_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(maintenance_url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def synthetic(*, resting: int, stream: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Order specs: a non-crossing resting book (bids 0.80-0.99, asks 1.01-1.20) and a stream."""
    rnd = random.Random(seed)
    buyers, sellers, dual = list(range(0, 40)), list(range(40, 80)), list(range(80, 90))

    def spec(side: str, price_cents: int, *, tif: str, dual_share: float) -> dict:
        if rnd.random() < dual_share:
            acct = rnd.choice(dual)
        else:
            acct = rnd.choice(buyers if side == "buy" else sellers)
        s = {
            "side": side,
            "account": acct,
            "price": Decimal(price_cents) / 100,
            "lots": rnd.randint(1, 5),
            "tif": tif,
            "hardware": None,
            "allowed": [],
        }
        if side == "sell":
            s["hardware"] = rnd.choice(HW)
        else:
            r = rnd.random()
            s["allowed"] = [] if r < 0.7 else sorted(rnd.sample(HW, 1 if r < 0.9 else 2))
        return s

    book = []
    for _ in range(resting):
        side = rnd.choice(["buy", "sell"])
        cents = rnd.randint(80, 99) if side == "buy" else rnd.randint(101, 120)
        book.append(spec(side, cents, tif="gtc", dual_share=0.0))
    flow = []
    for _ in range(stream):
        side = rnd.choice(["buy", "sell"])
        # Buyers bid around 0.99, sellers ask around 1.01: about a third of the flow crosses.
        centre = 99 if side == "buy" else 101
        cents = min(199, max(1, round(rnd.gauss(centre, 4))))
        flow.append(spec(side, cents, tif=rnd.choice(TIFS), dual_share=0.05))
    return book, flow


def run_engine(book_specs: list[dict], flow: list[dict]) -> tuple[float, list[tuple]]:
    from pricing import engine

    def order(i: int, s: dict) -> engine.BookOrder:
        return engine.BookOrder(
            id=i,
            seq=i,
            account_id=s["account"],
            side=s["side"],
            price=s["price"],
            remaining=s["lots"] * LOT,
            tif=s["tif"],
            hardware=s["hardware"],
            allowed=frozenset(s["allowed"]),
        )

    resting = [order(i, s) for i, s in enumerate(book_specs, start=1)]
    incoming = [order(i, s) for i, s in enumerate(flow, start=len(book_specs) + 1)]
    t0 = time.perf_counter()
    ob = engine.OrderBook(resting)
    fills = []
    for o in incoming:
        for f in ob.submit(o).fills:
            fills.append((f.buy_id, f.sell_id, f.price, f.quantity, f.hardware))
    return time.perf_counter() - t0, fills


def synthetic_gtc(*, stream: int, seed: int) -> list[dict]:
    """A stream for the peer comparison: GTC limit orders only, one hardware type, no
    restrictions and no account on both sides, which is the model pyorderbook implements.
    Prices as in synthetic(); the book deepens as GTC remainders rest."""
    rnd = random.Random(seed)
    flow = []
    for i in range(stream):
        side = rnd.choice(["buy", "sell"])
        centre = 99 if side == "buy" else 101
        cents = min(199, max(1, round(rnd.gauss(centre, 4))))
        flow.append(
            {
                "side": side,
                "account": i,  # every order its own account: self-trade prevention never applies
                "price": Decimal(cents) / 100,
                "lots": rnd.randint(1, 5),
                "tif": "gtc",
                "hardware": "h100" if side == "sell" else None,
                "allowed": [],
            }
        )
    return flow


def run_pyorderbook(flow: list[dict]) -> tuple[float, list[tuple]]:
    """The same stream through pyorderbook (PyPI), the peer. Orders are built before the clock
    starts, as for our engine; fills come back as (buy, sell, price, quantity, hardware)."""
    import logging

    import pyorderbook

    logging.getLogger("pyorderbook").setLevel(logging.WARNING)  # its basicConfig says INFO
    orders = [
        (pyorderbook.bid if s["side"] == "buy" else pyorderbook.ask)("X", s["price"], s["lots"] * LOT) for s in flow
    ]
    index = {o.id: i for i, o in enumerate(orders, start=1)}
    book = pyorderbook.Book()
    blotters = []
    t0 = time.perf_counter()
    for o in orders:
        blotters.append(book.match(o))
    elapsed = time.perf_counter() - t0
    fills = []
    for b in blotters:
        for t in b.trades:
            taker, maker = index[t.incoming_order_id], index[t.standing_order_id]
            buy, sell = (taker, maker) if flow[taker - 1]["side"] == "buy" else (maker, taker)
            fills.append((buy, sell, t.fill_price, t.fill_quantity, "h100"))
    return elapsed, fills


def run_peer(*, orders: int, seed: int) -> None:
    """Our engine against pyorderbook on one GTC stream, in this run; their fills must agree."""
    flow = synthetic_gtc(stream=orders, seed=seed)
    print(f"[peer] {orders:,}-order GTC stream: pricing.engine vs pyorderbook", flush=True)
    t_ours, ours = run_engine([], flow)
    t_peer, theirs = run_pyorderbook(flow)
    same = ours == theirs
    print(f"[peer] pricing.engine: {orders / t_ours:>10,.0f} orders/s ({t_ours:.2f}s, {len(ours):,} trades)")
    print(f"[peer] pyorderbook:    {orders / t_peer:>10,.0f} orders/s ({t_peer:.2f}s, {len(theirs):,} trades)")
    print(f"[peer] ratio pricing.engine/pyorderbook: {t_peer / t_ours:.2f}x; same trades: {same}", flush=True)
    if not same:
        sys.exit("pricing.engine and pyorderbook disagree on the GTC stream")


def setup_database(book_specs: list[dict], flow: list[dict]):
    """Catalog, accounts, funds, the resting book and the pending stream; returns the instrument."""
    from io import StringIO

    from django.core.management import call_command
    from django.db import transaction

    from marketplace import services as market
    from marketplace.models import Account, Hardware, Order, Region, Tier
    from metering import money
    from metering.ledger import ledger_accounts_ensure, ledger_post
    from metering.models import LedgerTransaction
    from metering.money import max_fee_bps
    from metering.services import funds_deposit

    call_command("migrate", "--noinput", stdout=StringIO())
    call_command("seed_catalog", stdout=StringIO())
    import datetime as dt

    from django.utils import timezone

    day = timezone.now().date() + dt.timedelta(days=2)
    inst = market.instrument_create(
        tier=Tier.objects.get(code="standard"), region=Region.objects.get(code="cn-west-1"), day=day
    )
    accounts = []
    for i in range(90):
        accounts.append(
            Account.objects.create(
                name=f"Bench {i}", slug=f"bench-{i}", is_buyer=i < 40 or i >= 80, is_provider=i >= 40
            )
        )
    for a in accounts:
        if a.is_buyer:
            funds_deposit(account=a, amount=Decimal("1000000000.00"), reason="bench funding")
    hw_ids = dict(Hardware.objects.values_list("code", "id"))
    fee = max_fee_bps()
    reserve_cache: dict[tuple[Decimal, int], Decimal] = {}

    def reserve(price: Decimal, lots: int) -> Decimal:
        if (price, lots) not in reserve_cache:
            reserve_cache[(price, lots)] = money.reserve(quantity=lots * LOT, price=price, max_fee_bps=fee)
        return reserve_cache[(price, lots)]

    escrow: dict[int, Decimal] = defaultdict(Decimal)
    rows = []
    for seq, s in enumerate(book_specs + flow, start=1):
        acct = accounts[s["account"]]
        r = reserve(s["price"], s["lots"]) if s["side"] == "buy" else Decimal("0")
        escrow[acct.pk] += r
        rows.append(
            Order(
                account_id=acct.pk,
                instrument_id=inst.pk,
                side=s["side"],
                quantity=s["lots"] * LOT,
                price=s["price"],
                time_in_force=s["tif"],
                hardware_id=hw_ids[s["hardware"]] if s["hardware"] else None,
                allowed_hardware=s["allowed"],
                # The resting book is what earlier matching left: sequenced, processed, open.
                # The stream has no sequence yet: the matcher gives one in id order.
                sequence=seq if seq <= len(book_specs) else None,
                pending_match=seq > len(book_specs),
                allowed_hardware_ids=sorted(hw_ids[c] for c in s["allowed"]),
                maker_fee_bps=money.fee_bps(maker=True),
                taker_fee_bps=money.fee_bps(maker=False),
            )
        )
    with transaction.atomic():
        Order.objects.bulk_create(rows, batch_size=5000)
        inst.book.last_matched_sequence = len(book_specs)
        inst.book.save(update_fields=["last_matched_sequence"])
        for a in accounts:
            if escrow[a.pk]:
                ledger = ledger_accounts_ensure(account=a)
                ledger_post(
                    key=f"bench-reserve:{a.pk}",
                    kind=LedgerTransaction.Kind.ESCROW_RESERVE,
                    legs=[(ledger["available"].pk, -escrow[a.pk]), (ledger["escrow"].pk, escrow[a.pk])],
                    memo="bench: escrow of every buy order",
                )
    from pricing.book_rows import book_top_refresh

    book_top_refresh(book_row=inst.book)
    return inst


def run_database(inst, *, total: int, chunk: int = 10_000) -> tuple[float, list[float]]:
    """Match everything; (seconds, orders/s of each `chunk` orders in stream order)."""
    from django.conf import settings

    from marketplace.models import Order
    from pricing.matcher import instrument_match

    batches_per_call = max(1, chunk // settings.MATCH_BATCH_SIZE)
    done = 0
    rates = []
    t0 = time.perf_counter()
    while True:
        t_call = time.perf_counter()
        report = instrument_match(instrument_id=inst.pk, max_batches=batches_per_call)
        now = time.perf_counter()
        done += report.processed
        if report.processed:
            rates.append(report.processed / (now - t_call))
            print(f"  [db] {done:,}/{total:,} orders matched, this chunk {rates[-1]:,.0f} orders/s", flush=True)
        if not report.more_pending:
            break
    elapsed = time.perf_counter() - t0
    assert not Order.objects.filter(instrument=inst, pending_match=True).exists()
    return elapsed, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resting", type=int, default=10_000, help="resting orders in the book first")
    parser.add_argument("--orders", type=int, default=100_000, help="orders pushed through the matcher")
    parser.add_argument("--batch-size", type=int, default=None, help="MATCH_BATCH_SIZE (default: settings)")
    parser.add_argument("--database", default="ciyuan_bench_match", help="bench database (dropped, recreated)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-check", action="store_true", help="skip the invariant check at the end")
    parser.add_argument("--profile", action="store_true", help="cProfile the database matcher, print the top")
    parser.add_argument("--peer-orders", type=int, default=200_000, help="GTC orders for the pyorderbook comparison")
    parser.add_argument("--peer-only", action="store_true", help="only the pure engine vs pyorderbook (no database)")
    args = parser.parse_args()

    run_peer(orders=args.peer_orders, seed=args.seed)
    if args.peer_only:
        return

    base = os.environ.get("DATABASE_URL", "")
    if not base:
        sys.exit("set DATABASE_URL=postgres://user@host:5432/anydb (the bench creates its own database)")
    bench_url, maintenance_url = bench_database_url(base, args.database)
    os.environ["DATABASE_URL"] = bench_url
    if args.batch_size:
        os.environ["MATCH_BATCH_SIZE"] = str(args.batch_size)

    print(f"generating {args.resting:,} resting + {args.orders:,} incoming orders (seed {args.seed})", flush=True)
    book_specs, flow = synthetic(resting=args.resting, stream=args.orders, seed=args.seed)

    print("[memory] pure engine ...", flush=True)
    t_engine, engine_fills = run_engine(book_specs, flow)
    engine_rate = args.orders / t_engine
    print(f"[memory] {args.orders:,} orders in {t_engine:.2f}s: {engine_rate:,.0f} orders/s, {len(engine_fills):,} trades")

    import django

    print(f"[db] recreating database {args.database} and loading the book ...", flush=True)
    recreate_database(maintenance_url, args.database)
    django.setup()
    from django.conf import settings
    from django.db import connection

    t0 = time.perf_counter()
    inst = setup_database(book_specs, flow)
    print(f"[db] loaded in {time.perf_counter() - t0:.1f}s; matching with MATCH_BATCH_SIZE={settings.MATCH_BATCH_SIZE}")
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    t_db, rates = run_database(inst, total=args.orders)
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    db_rate = args.orders / t_db

    from pricing.replay import instrument_trades

    recorded = instrument_trades(instrument_id=inst.pk)
    book_ids = {}  # engine ids are sequence numbers; map database ids to sequence numbers
    from marketplace.models import Order

    book_ids = dict(Order.objects.filter(instrument=inst).values_list("id", "sequence"))
    as_seq = [(book_ids[b], book_ids[s], p, q, hw) for b, s, p, q, hw in recorded]
    same = as_seq == engine_fills
    print(f"[db] {args.orders:,} orders in {t_db:.2f}s: {db_rate:,.0f} orders/s, {len(recorded):,} trades")
    print(f"[check] database trades == in-memory engine trades: {same}")
    if not args.no_check:
        from tests.invariants import assert_invariants

        t0 = time.perf_counter()
        assert_invariants()
        print(f"[check] invariants hold ({time.perf_counter() - t0:.1f}s)")
    connection.close()

    print()
    print(f"pure engine (ceiling):   {engine_rate:>10,.0f} orders/s")
    print(f"database matcher:        {db_rate:>10,.0f} orders/s")
    print(f"ratio database/ceiling:  {db_rate / engine_rate:>10.1%}")
    from pricing.matcher import resident_stats

    print(f"per 10,000 orders:       {', '.join(f'{r:,.0f}' for r in rates)} orders/s")
    half = len(rates) // 2
    if half:
        first, second = sum(rates[:half]) / half, sum(rates[half:]) / (len(rates) - half)
        print(f"second half / first half: {second / first:>9.2f} (1.00 = the rate does not fall as the book deepens)")
    print(f"resident book: loaded {resident_stats['loaded']}x, reused {resident_stats['reused']}x")
    if not same:
        sys.exit("database trades differ from the engine's")


if __name__ == "__main__":
    main()
