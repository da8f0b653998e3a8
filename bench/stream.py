"""Benchmark: the live feed with many subscribers while orders trade, beside a bare Channels
broadcast in the same run as the ceiling.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_stream REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python bench/stream.py [--subscribers 500] [--rate 200] [--seconds 20]

In its own PostgreSQL database (ciyuan_bench_stream on the DATABASE_URL server, dropped and
recreated each run) it seeds today's instrument with a deep ask at 1.00 and funded buyers, then
starts one uvicorn (bench/stream_asgi.py: the exchange's app plus /bench/bare) and one Celery
worker on Redis (channels-redis delivery, as in production).

1. Feed: --subscribers WebSocket clients (one asyncio process) subscribe to the instrument's
   market channel; this process places 1-lot buys at 1.00 at --rate orders/s for --seconds
   (each fills at once against the deep ask: a trade and a depth change per batch). Each
   subscriber checks that its sequence numbers have no gap and notes, per trade, the time from
   the trade's execution stamp (taken in the matcher's batch before its commit, so this is an
   upper bound on commit -> received) to its arrival.
2. Ceiling: the same number of clients on /bench/bare (join a group, forward what comes); this
   process group_sends messages of the feed's size at the feed's measured message rate for
   --seconds, each stamped when sent: the fastest Channels carries that fan-out on this machine.
Prints messages/s received (all subscribers), p50/p99 latency, gaps, for both. Every phase is
bounded; the processes are stopped at the end (and on any error).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
from bench.api import start, stop, wait_http  # noqa: E402

DB_NAME = "ciyuan_bench_stream"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def seed(*, buyers: int) -> dict:
    from django.core.management import call_command

    from marketplace import services
    from marketplace.models import Region, Tier
    from metering.services import funds_deposit
    from pricing.services import instrument_match

    call_command("migrate", verbosity=0)
    call_command("seed_catalog", verbosity=0)
    today = dt.datetime.now(dt.UTC).date()
    inst = services.instrument_create(
        tier=Tier.objects.get(code="standard"), region=Region.objects.get(code="cn-west-1"), day=today
    )
    deep = services.account_create(name="bench deep ask", is_buyer=False, is_provider=True)
    services.order_place(account=deep, instrument=inst, side="sell", quantity=10_000_000 * 1_000_000,
                         price=Decimal("1.00"), hardware="h100")  # fmt: skip
    # Resting bids below, so depth messages carry a real book.
    for k in range(50):
        services.order_place(account=deep, instrument=inst, side="sell", quantity=1_000_000,
                             price=Decimal("1.01") + Decimal(k) / 100, hardware="h100")  # fmt: skip
    instrument_match(instrument_id=inst.pk)
    accounts = []
    for i in range(buyers):
        acct = services.account_create(name=f"bench stream buyer {i}", is_buyer=True)
        funds_deposit(account=acct, amount=Decimal("10000000.00"), reason="bench")
        accounts.append(acct.pk)
    return {"symbol": inst.symbol, "instrument": inst.pk, "buyers": accounts}


# --- subscribers (a separate process: the load generator must not share this one's GIL) -------


def subscribers_main(url: str, n: int, subscribe: str | None, seconds: float, out: multiprocessing.Queue) -> None:
    from websockets.asyncio.client import connect

    async def one(i: int, ready: asyncio.Event, counts: dict, lat: list, stop_at: list) -> None:
        async with connect(url, max_queue=None, open_timeout=60) as ws:
            last = None
            if subscribe:
                await ws.send(json.dumps({"op": "subscribe", "channel": subscribe}))
            counts["connected"] += 1
            if counts["connected"] == n:
                ready.set()
            while True:
                timeout = (stop_at[0] - time.time()) if stop_at else 3600
                if timeout <= 0:
                    return
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout)
                except TimeoutError:
                    return
                now = time.time()
                msg = json.loads(raw)
                counts["messages"] += 1
                if subscribe:
                    if msg.get("type") == "snapshot":
                        last = msg["seq"]
                        continue
                    if last is not None and msg["seq"] != last + 1:
                        counts["gaps"] += 1
                    last = msg["seq"]
                    if msg["type"] == "trades" and i % 10 == 0:  # every 10th client samples latency
                        for t in msg["data"]["trades"]:
                            lat.append(now - dt.datetime.fromisoformat(t["executed_at"]).timestamp())
                elif i % 10 == 0:
                    lat.append(now - msg["sent"])

    async def run() -> None:
        counts = {"connected": 0, "messages": 0, "gaps": 0}
        lat: list[float] = []
        ready = asyncio.Event()
        stop_at: list[float] = []
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(one(i, ready, counts, lat, stop_at)))
            if i % 50 == 49:
                await asyncio.sleep(0.2)  # do not stampede the server's accept loop
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(1)  # snapshots in
        base = counts["messages"]
        out.put(("ready", None))
        t0 = time.time()
        stop_at.append(t0 + seconds + 2)
        await asyncio.gather(*tasks, return_exceptions=True)
        out.put(("done", {"messages": counts["messages"] - base, "seconds": time.time() - t0, "gaps": counts["gaps"],
                          "latency": lat}))  # fmt: skip

    asyncio.run(run())


def run_subscribers(url: str, n: int, subscribe: str | None, seconds: float, load) -> dict:
    q: multiprocessing.Queue = multiprocessing.Queue()
    p = multiprocessing.Process(target=subscribers_main, args=(url, n, subscribe, seconds, q), daemon=True)
    p.start()
    try:
        kind, _ = q.get(timeout=180)
        assert kind == "ready"
        sent = load()
        kind, result = q.get(timeout=seconds + 120)
        result["sent"] = sent
        return result
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()


# --- load -------------------------------------------------------------------------------------


def place_orders(*, instrument_id: int, buyers: list[int], rate: float, seconds: float) -> dict:
    """1-lot buys at 1.00 from a few threads, paced to `rate` in total."""
    from django.db import connection

    from marketplace import services
    from marketplace.models import Account, Instrument

    threads_n = 4
    placed, errors = [0], []

    def worker(k: int) -> None:
        inst = Instrument.objects.select_related("tier", "region").get(pk=instrument_id)
        accounts = list(Account.objects.filter(pk__in=buyers[k::threads_n]))
        interval = threads_n / rate
        t_next = time.monotonic()
        deadline = t_next + seconds
        i = 0
        while time.monotonic() < deadline:
            try:
                services.order_place(account=accounts[i % len(accounts)], instrument=inst, side="buy",
                                     quantity=1_000_000, price=Decimal("1.00"))  # fmt: skip
                placed[0] += 1
            except Exception as exc:  # noqa: BLE001 (counted and shown)
                errors.append(repr(exc)[:200])
            i += 1
            t_next += interval
            time.sleep(max(0.0, t_next - time.monotonic()))
        connection.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    return {"orders": placed[0], "seconds": time.monotonic() - t0, "errors": errors[:5], "error_count": len(errors)}


def broadcast(*, rate: float, seconds: float, size: int) -> dict:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from bench.stream_asgi import BARE_GROUP

    layer = get_channel_layer()
    pad = "x" * max(0, size - 40)

    async def run() -> int:
        n = 0
        interval = 1 / rate
        t_next = time.monotonic()
        deadline = t_next + seconds
        while time.monotonic() < deadline:
            await layer.group_send(BARE_GROUP, {"type": "bare.message",
                                                "text": json.dumps({"sent": time.time(), "pad": pad})})  # fmt: skip
            n += 1
            t_next += interval
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        return n

    return {"messages": async_to_sync(run)()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=500)
    ap.add_argument("--rate", type=float, default=200, help="orders/s (each one trades)")
    ap.add_argument("--seconds", type=float, default=20, help="length of each phase (bounded)")
    ap.add_argument("--buyers", type=int, default=16)
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8655")))
    args = ap.parse_args()
    if not os.environ.get("REDIS_URL"):
        sys.exit("bench/stream.py needs Redis: REDIS_URL=redis://127.0.0.1:6379/N")
    import bench.api as api

    api.DB_NAME = DB_NAME  # bench/api.py's database helpers, on this bench's database
    bench_db, maintenance = api.bench_urls(os.environ.get("DATABASE_URL", ""))
    api.recreate_database(maintenance)
    env = {**os.environ, "DATABASE_URL": bench_db, "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_LEVEL": "WARNING",
           "REDIS_KEY_PREFIX": "bench-stream", "CONN_MAX_AGE": "60"}  # fmt: skip
    os.environ.update(env)
    import django

    django.setup()
    from django.core.cache import cache
    from django.db import connections

    print(f"seeding {DB_NAME} ...", flush=True)
    seed_data = seed(buyers=args.buyers)
    cache.clear()
    connections.close_all()
    ws_base = f"ws://127.0.0.1:{args.port}"
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="ciyuan-bench-stream-") as tmpdir:
        tmp = Path(tmpdir)
        web = start([sys.executable, "-m", "uvicorn", "bench.stream_asgi:application", "--host", "127.0.0.1",
                     "--port", str(args.port), "--ws", "websockets-sansio", "--log-level", "warning",
                     "--no-access-log"], env, tmp / "uvicorn.log")  # fmt: skip
        worker = start([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel",
                        "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                       env, tmp / "celery.log")  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{args.port}/api/v1/tiers")
            time.sleep(3)  # the worker consumes
            print(f"feed: {args.subscribers} subscribers, {args.rate:.0f} orders/s for {args.seconds:.0f}s ...",
                  flush=True)  # fmt: skip
            load_result: dict = {}

            def load() -> dict:
                load_result.update(place_orders(instrument_id=seed_data["instrument"], buyers=seed_data["buyers"],
                                                rate=args.rate, seconds=args.seconds))  # fmt: skip
                return load_result

            feed = run_subscribers(f"{ws_base}/ws/v1/stream", args.subscribers, f"market.{seed_data['symbol']}",
                                   args.seconds, load)  # fmt: skip
            from streams.models import StreamEvent

            events = StreamEvent.objects.filter(channel=f"market.{seed_data['instrument']}")
            channel_msgs = events.count()
            sizes = [len(json.dumps(e.data)) for e in events.order_by("-seq")[:200]]
            size = int(sum(sizes) / len(sizes)) if sizes else 200
            # The ceiling carries the channel's own message rate, to every subscriber.
            per_sub_rate = channel_msgs / load_result["seconds"]
            print(f"ceiling: {args.subscribers} subscribers on /bench/bare, {per_sub_rate:.0f} messages/s of "
                  f"{size} bytes for {args.seconds:.0f}s ...", flush=True)  # fmt: skip
            bare = run_subscribers(f"{ws_base}/bench/bare", args.subscribers, None, args.seconds,
                                   lambda: broadcast(rate=max(per_sub_rate, 1), seconds=args.seconds, size=size))  # fmt: skip
            uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        finally:
            stop(web)
            stop(worker)
    from marketplace.models import Trade

    trades = Trade.objects.filter(instrument_id=seed_data["instrument"]).count()
    print(f"\n{args.subscribers} subscribers (one asyncio process), one uvicorn process, one Celery worker (solo), "
          f"{args.seconds:.0f}s per phase")  # fmt: skip
    print(f"uptime before: {uptime}\nuptime after:  {uptime_after}")
    lo = load_result
    print(f"orders placed: {lo['orders']} in {lo['seconds']:.1f}s ({lo['orders'] / lo['seconds']:.0f}/s, "
          f"{lo['error_count']} errors); trades: {trades}; market channel messages: {channel_msgs}")  # fmt: skip
    print(f"{'phase':<8} {'msgs/s recv':>12} {'per sub/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'gaps':>6} {'samples':>8}")
    for name, r in (("feed", feed), ("bare", bare)):
        rate = r["messages"] / r["seconds"]
        print(f"{name:<8} {rate:>12.0f} {rate / args.subscribers:>10.1f} {pct(r['latency'], 50) * 1000:>8.1f} "
              f"{pct(r['latency'], 99) * 1000:>8.1f} {r['gaps']:>6} {len(r['latency']):>8}")  # fmt: skip
    for err in lo["errors"]:
        print(f"  order error: {err}")


if __name__ == "__main__":
    main()
