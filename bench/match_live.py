"""Benchmark: the live fill latency of the match worker, without HTTP in the way.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_h1 REDIS_URL=redis://127.0.0.1:6379/5 \
        .venv/bin/python bench/match_live.py [--rate 200] [--seconds 10] [--threads 4]

In its own PostgreSQL database (ciyuan_bench_match_live, dropped and recreated) it seeds one
instrument with a deep ask at 1.00 and --resting asks above it, starts one real Celery worker
(prefork, one process, on Redis, as bench/api.py does) and waits for its match heartbeat, then
places crossing 1-lot buys at 1.00 at a steady --rate from --threads threads, and a poller
reads every --poll-ms which of them are filled. Placement is marketplace.services.order_place
(the service POST /api/v1/orders calls), or with --direct an INSERT of the order row as
placement leaves it (escrow reserved up front for all of them) plus the same enqueue_match:
Python placement alone may not reach the rate on a shared machine. Per order it reports the
time from the order committed (what a POST answer means) to the fill visible in the orders
table, p50 and p99, how many orders each matcher batch carried, and checks every invariant.

This is the worker's share of bench/api.py's end-to-end figure: that one adds gunicorn, DRF
and an HTTP client polling GET /orders/{id} on the same two cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from bench.match import bench_database_url, recreate_database  # noqa: E402

LOT = 1_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200, help="orders/s placed")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=4, help="placing threads (each its own connection)")
    ap.add_argument("--poll-ms", type=float, default=5)
    ap.add_argument("--resting", type=int, default=10_000, help="asks resting above the touch (a deep book)")
    ap.add_argument(
        "--direct", action="store_true",
        help="insert each pending order row (escrow reserved up front) and queue matching as order_place "
        "does, instead of calling order_place: the worker at a rate Python placement cannot reach here",
    )  # fmt: skip
    ap.add_argument("--database", default="ciyuan_bench_match_live", help="bench database (dropped, recreated)")
    args = ap.parse_args()
    if not os.environ.get("REDIS_URL"):
        sys.exit("set REDIS_URL=redis://127.0.0.1:6379/N (the worker and the task queue live there)")
    bench_url, maintenance = bench_database_url(os.environ.get("DATABASE_URL", ""), args.database)
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("REDIS_KEY_PREFIX", f"bench-live-{os.getpid()}")
    recreate_database(maintenance, args.database)

    import django

    django.setup()
    from io import StringIO

    from django.core.management import call_command
    from django.db import connection

    from marketplace import services
    from marketplace.models import Hardware, Instrument, InstrumentBook, Order
    from metering import money
    from metering.ledger import ledger_accounts_ensure, ledger_post
    from metering.models import LedgerTransaction
    from metering.services import funds_deposit
    from pricing import dispatch

    call_command("migrate", "--noinput", stdout=StringIO())
    call_command("seed_catalog", stdout=StringIO())
    import datetime as dt

    from django.utils import timezone

    from marketplace.models import Region, Tier

    inst = services.instrument_create(
        tier=Tier.objects.get(code="standard"), region=Region.objects.get(code="cn-west-1"),
        day=timezone.now().date() + dt.timedelta(days=2),
    )  # fmt: skip
    total = int(args.rate * args.seconds)
    deep = services.account_create(name="bench deep ask", is_buyer=False, is_provider=True)
    services.order_place(account=deep, instrument=inst, side="sell", quantity=10 * total * LOT,
                         price=Decimal("1.00"), hardware="h100")  # fmt: skip
    # The deep book: asks from 1.01 to 1.50 that the flow never reaches (sells reserve nothing).
    h100 = Hardware.objects.get(code="h100")
    Order.objects.bulk_create(
        [Order(account=deep, instrument=inst, side="sell", quantity=LOT, price=Decimal(101 + i % 50) / 100,
               hardware=h100) for i in range(args.resting)],
        batch_size=5000,
    )  # fmt: skip
    buyers = []
    for i in range(args.threads * 4):
        acct = services.account_create(name=f"bench live buyer {i}", is_buyer=True)
        funds_deposit(account=acct, amount=Decimal("10000000.00"), reason="bench")
        buyers.append(acct)
    maker_bps, taker_bps = money.fee_bps(maker=True), money.fee_bps(maker=False)
    # What placement reserves for one buy of one lot at 1.00 (quantity x limit + the highest fee, rounded up once).
    reserve = money.reserve(quantity=LOT, price=Decimal("1.00"), max_fee_bps=max(maker_bps, taker_bps))
    if args.direct:
        for k, acct in enumerate(buyers):
            n = len(range(k, total, len(buyers)))
            ledger = ledger_accounts_ensure(account=acct)
            ledger_post(
                key=f"bench-live-reserve:{acct.pk}", kind=LedgerTransaction.Kind.ESCROW_RESERVE,
                legs=[(ledger["available"].pk, -reserve * n), (ledger["escrow"].pk, reserve * n)],
                memo="bench: escrow of every buy order placed below",
            )  # fmt: skip

    env = dict(os.environ)
    log = Path(f"/tmp/bench-match-live-{os.getpid()}-celery.log")
    with open(log, "wb") as f:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork", "--concurrency", "1",
             "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not dispatch.live_workers():
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit(f"the worker did not come up; see {log}")
            time.sleep(0.3)
        # The deep ask is matched (rests) by the worker: the resident book is loaded before the clock.
        dispatch.enqueue_match(inst.pk)
        while Order.objects.filter(instrument=inst, pending_match=True).exists():
            time.sleep(0.1)
        batches0 = InstrumentBook.objects.get(pk=inst.pk).batches
        print(f"worker up ({dispatch.live_workers()}); placing {total:,} buys at {args.rate:.0f}/s "
              f"from {args.threads} threads ({'direct rows' if args.direct else 'order_place'}); `uptime`: {os.getloadavg()}", flush=True)  # fmt: skip

        committed: dict[int, float] = {}
        seen: dict[int, float] = {}
        lock = threading.Lock()
        done = threading.Event()
        inst_obj = Instrument.objects.select_related("tier").get(pk=inst.pk)

        def place(i: int) -> None:
            try:
                if args.direct:
                    order = Order.objects.create(account=buyers[i % len(buyers)], instrument=inst_obj, side="buy",
                                                 quantity=LOT, price=Decimal("1.00"), maker_fee_bps=maker_bps,
                                                 taker_fee_bps=taker_bps,
                                                 unused_capacity_share=inst_obj.tier.unused_capacity_share,
                                                 output_token_weight=inst_obj.tier.output_token_weight,
                                                 cached_input_weight=inst_obj.tier.cached_input_weight)  # fmt: skip
                    dispatch.enqueue_match(inst_obj.pk)
                else:
                    order = services.order_place(account=buyers[i % len(buyers)], instrument=inst_obj, side="buy",
                                                 quantity=LOT, price=Decimal("1.00"))  # fmt: skip
                t = time.perf_counter()
                with lock:
                    committed[order.pk] = t
            finally:
                connection.close_if_unusable_or_obsolete()

        def poll() -> None:
            from django.db import connection as conn

            while not done.is_set() or len(seen) < len(committed):
                with lock:
                    waiting = [oid for oid in committed if oid not in seen]
                if waiting:
                    with conn.cursor() as cur:
                        cur.execute(
                            "SELECT id FROM marketplace_order WHERE id = ANY(%s) AND status = 'filled'", [waiting]
                        )
                        t = time.perf_counter()
                        for (oid,) in cur.fetchall():
                            seen[oid] = t
                if done.is_set() and time.perf_counter() > t_end + 60:
                    break
                time.sleep(args.poll_ms / 1000)
            conn.close()

        t_end = float("inf")
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            futures = []
            for i in range(total):
                delay = t0 + i / args.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(place, i))
            for fu in futures:
                fu.result()
        t_end = time.perf_counter()
        achieved = total / (t_end - t0)
        done.set()
        poller.join()
        lat = sorted((seen[o] - committed[o]) * 1000 for o in committed if o in seen)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

        batches = InstrumentBook.objects.get(pk=inst.pk).batches - batches0
        print(f"placed {total:,} at {achieved:.0f} orders/s; filled {len(lat):,}; "
              f"committed -> fill visible p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {lat[-1]:.0f} ms "
              f"(polled every {args.poll_ms:.0f} ms)")  # fmt: skip
        print(f"matcher batches: {batches:,} ({total / max(batches, 1):.1f} orders a batch); "
              f"`uptime`: {os.getloadavg()}")  # fmt: skip
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    from tests.invariants import assert_invariants

    assert_invariants()
    print("invariants hold")
    connection.close()


if __name__ == "__main__":
    main()
