"""Benchmark: the REST API under load from wrk, against two DRF ceilings in the same gunicorn.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_engine REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python bench/api.py [--seconds 15] [--connections 16] [--web-workers 3]

In its own PostgreSQL database (ciyuan_bench_api on the DATABASE_URL server, dropped and
recreated each run) it migrates, seeds an instrument with a resting book, buyers with funds
and keys, providers with contracts and a deep ask for the end-to-end part, then starts one
gunicorn (--web-workers processes, production settings; bench/api_settings.py turns on
BENCH_VIEWS, which mounts the two bench-only ceiling views) and a real Celery worker on Redis.

Load comes from wrk (installed with apt-get if missing; Debian's package), closed loop,
--connections connections on 2 threads, --seconds per scenario, Lua scripts in bench/wrk/:
- ceiling-get: GET /bench/ceiling, the smallest DRF APIView (no auth, throttle or query);
- ceiling-insert: POST /bench/rows, the smallest DRF ModelViewSet create (one row inserted);
- book: GET /api/v1/instruments/{symbol}/book;
- orders: POST /api/v1/orders, valid distinct escrowed buys, each with its own Idempotency-Key;
- usage: POST /api/v1/usage, batches of --usage-batch events.
Then end to end: a paced client places crossing buys at a steady --e2e-rate orders/s for
--e2e-seconds and measures, per order, the time from the POST's answer to the first GET
/api/v1/orders/{id} that shows it filled (polled every --e2e-poll-ms). It prints requests/s,
p50 and p99 per scenario with the ratio to its ceiling, the end-to-end p50 and p99, the query
count of one request of each kind, and checks the invariants once the matchers are done.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DB_NAME = os.environ.get("BENCH_API_DATABASE", "ciyuan_bench_api")  # parallel runs each need their own
SCENARIOS = ["ceiling-get", "ceiling-insert", "book", "orders", "usage"]
CEILING_OF = {"book": "ceiling-get", "orders": "ceiling-insert", "usage": "ceiling-insert"}
WRK_DIR = BASE_DIR / "bench" / "wrk"


def bench_urls(base: str) -> tuple[str, str]:
    parts = urlsplit(base)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        sys.exit("bench/api.py needs PostgreSQL: DATABASE_URL=postgres://user@host:5432/dbname")
    return urlunsplit(parts._replace(path=f"/{DB_NAME}")), urlunsplit(parts._replace(path="/postgres"))


def recreate_database(maintenance_url: str) -> None:
    import psycopg

    with psycopg.connect(maintenance_url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def seed(*, buyers: int, providers: int, usage_batch: int) -> dict:
    """Today's instrument with a resting book, funded buyers and providers with contracts."""
    from django.core.management import call_command

    from marketplace import services
    from marketplace.models import Region, Tier, Trade
    from metering.services import funds_deposit
    from pricing.services import instrument_match

    call_command("migrate", verbosity=0)
    call_command("seed_catalog", verbosity=0)
    today = dt.datetime.now(dt.UTC).date()
    inst = services.instrument_create(
        tier=Tier.objects.get(code="standard"), region=Region.objects.get(code="cn-west-1"), day=today
    )
    buyer_keys, provider_rows = [], []
    for i in range(buyers):
        acct = services.account_create(name=f"bench buyer {i}", is_buyer=True)
        funds_deposit(account=acct, amount=Decimal("10000000.00"), reason="bench")
        buyer_keys.append(services.api_key_create(account=acct, scopes=["read", "trade"])[1])
    for i in range(providers):
        prov = services.account_create(name=f"bench provider {i}", is_buyer=False, is_provider=True)
        buyer = services.account_create(name=f"bench contract buyer {i}", is_buyer=True)
        funds_deposit(account=buyer, amount=Decimal("100000.00"), reason="bench")
        # A contract to report usage against, and asks that stay resting above the bench bids.
        services.order_place(account=prov, instrument=inst, side="sell", quantity=1000 * 1_000_000,
                             price=Decimal("1.00"), hardware="h100")  # fmt: skip
        services.order_place(account=buyer, instrument=inst, side="buy", quantity=1000 * 1_000_000,
                             price=Decimal("1.00"))  # fmt: skip
        for k in range(20):
            services.order_place(account=prov, instrument=inst, side="sell", quantity=1_000_000,
                                 price=Decimal("1.10") + Decimal(k) / 100, hardware="h100")  # fmt: skip
        instrument_match(instrument_id=inst.pk)
        contract = Trade.objects.filter(seller=prov).first()
        provider_rows.append(
            {
                "key": services.api_key_create(account=prov, scopes=["read", "meter"])[1],
                "buyer": buyer.slug,
                "contract": contract.pk,
                "timestamp": (inst.delivery_start + dt.timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            }
        )
    # Deep liquidity for the end-to-end part: every 1-lot buy at 1.00 fills against it at once.
    deep = services.account_create(name="bench deep ask", is_buyer=False, is_provider=True)
    services.order_place(account=deep, instrument=inst, side="sell", quantity=10_000_000 * 1_000_000,
                         price=Decimal("1.00"), hardware="h100")  # fmt: skip
    instrument_match(instrument_id=inst.pk)
    e2e_keys = []
    for i in range(8):
        acct = services.account_create(name=f"bench e2e buyer {i}", is_buyer=True)
        funds_deposit(account=acct, amount=Decimal("10000000.00"), reason="bench")
        e2e_keys.append(services.api_key_create(account=acct, scopes=["read", "trade"])[1])
    return {"symbol": inst.symbol, "buyer_keys": buyer_keys, "providers": provider_rows, "usage_batch": usage_batch,
            "e2e_keys": e2e_keys}  # fmt: skip


def query_profile(seed_data: dict) -> list[tuple[str, int]]:
    """Queries one request of each kind runs (through the test client, same code path)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    p = seed_data["providers"][0]
    calls = [
        ("ceiling-get", "get", "/bench/ceiling", None, None),
        ("ceiling-insert", "post", "/bench/rows", {"name": "profile", "value": 1}, None),
        ("book", "get", f"/api/v1/instruments/{seed_data['symbol']}/book", None, None),
        ("orders", "post", "/api/v1/orders",
         {"instrument": seed_data["symbol"], "side": "buy", "quantity": 1_000_000, "price": "0.55"},
         seed_data["buyer_keys"][0]),
        ("usage", "post", "/api/v1/usage",
         {"events": [{"event_id": f"profile-{i}", "buyer": p["buyer"], "contract": p["contract"],
                      "timestamp": p["timestamp"], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
                     for i in range(seed_data["usage_batch"])]},
         p["key"]),
    ]  # fmt: skip
    out = []
    for name, method, path, body, key in calls:
        headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
        kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
        getattr(client, method)(path, **kwargs, **headers)  # warm: per-process caches filled
        with CaptureQueriesContext(connection) as ctx:
            r = getattr(client, method)(path, **kwargs, **headers)
        assert r.status_code < 300, (name, r.status_code, r.content[:300])
        out.append((name, len(ctx.captured_queries)))
        if os.environ.get("BENCH_SHOW_SQL"):
            print(name, *(q["sql"][:100] for q in ctx.captured_queries), sep="\n  ")
    return out


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


def wait_http(url: str, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    sys.exit(f"server at {url} did not come up")


def ensure_wrk() -> str:
    """wrk from Debian's package, installed here if missing (the bench only: CI never runs it)."""
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found: apt-get install -y wrk ...", flush=True)
    if subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
    path = shutil.which("wrk")
    if not path:
        sys.exit("could not install wrk (apt-get install wrk)")
    return path


def run_wrk(wrk: str, scenario: str, *, host: str, connections: int, seconds: int, env: dict) -> dict:
    script, path = {
        "ceiling-get": ("get.lua", "/bench/ceiling"),
        "ceiling-insert": ("rows.lua", "/bench/rows"),
        "book": ("get.lua", f"/api/v1/instruments/{env['BENCH_SYMBOL']}/book"),
        "orders": ("orders.lua", "/api/v1/orders"),
        "usage": ("usage.lua", "/api/v1/usage"),
    }[scenario]
    cmd = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_DIR / script),
           host + path]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"^WRK_JSON (.*)$", result.stdout, re.M)
    if m is None:
        sys.exit(f"wrk gave no figures for {scenario}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    r = json.loads(m.group(1))
    return {
        "requests": r["requests"],
        "failures": r["non_2xx"] + r["socket_errors"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50": r["p50_us"] / 1000,
        "p99": r["p99_us"] / 1000,
        "cmd": " ".join(cmd[:-1] + [path]),
    }


def run_end_to_end(*, host: str, symbol: str, keys: list[str], rate: float, seconds: float, poll_ms: float) -> dict:
    """Crossing 1-lot buys at a steady `rate`: time from each POST's answer to the first GET of
    the order that shows it filled. Each order runs in its own thread, started on schedule, so
    a slow answer never delays the next order (open loop at the placement rate)."""
    import requests

    total = int(rate * seconds)
    latencies: list[float] = []
    answers: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    sessions = threading.local()

    def session() -> requests.Session:
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        return sessions.s

    def one(i: int) -> None:
        try:
            place_and_wait(i)
        except requests.RequestException as exc:  # a timeout under overload counts, not crashes
            with lock:
                errors.append(f"order {i}: {type(exc).__name__}")

    def place_and_wait(i: int) -> None:
        key = keys[i % len(keys)]
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"e2e-{os.getpid()}-{i}"}
        body = {"instrument": symbol, "side": "buy", "quantity": 1_000_000, "price": "1.00"}
        s = session()
        t_sent = time.perf_counter()
        r = s.post(f"{host}/api/v1/orders", json=body, headers=headers, timeout=30)
        t_answered = time.perf_counter()
        if r.status_code != 201:
            with lock:
                errors.append(f"{r.status_code} {r.text[:200]}")
            return
        order_id = r.json()["id"]
        deadline = t_answered + 30
        while time.perf_counter() < deadline:
            g = s.get(f"{host}/api/v1/orders/{order_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            if g.status_code == 200 and g.json()["status"] == "filled":
                with lock:
                    latencies.append((time.perf_counter() - t_answered) * 1000)
                    answers.append((t_answered - t_sent) * 1000)
                return
            time.sleep(poll_ms / 1000)
        with lock:
            errors.append(f"order {order_id} not filled within 30 s")

    threads = []
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    achieved = total / (time.perf_counter() - t0)
    for t in threads:
        t.join(timeout=60)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {
        "orders": total,
        "filled": len(latencies),
        "errors": errors[:5],
        "error_count": len(errors),
        "rate": achieved,
        "p50": pct(latencies, 0.50),
        "p99": pct(latencies, 0.99),
        "answer_p50": pct(answers, 0.50),
        "answer_p99": pct(answers, 0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=15, help="load per scenario (bounded)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (closed loop)")
    ap.add_argument("--web-workers", type=int, default=3, help="gunicorn worker processes")
    ap.add_argument("--celery-workers", type=int, default=1, help="Celery worker processes (one worker)")
    ap.add_argument("--usage-batch", type=int, default=50, help="events per usage request")
    ap.add_argument("--e2e-rate", type=float, default=200, help="orders/s of the end-to-end part")
    ap.add_argument("--e2e-seconds", type=float, default=10)
    ap.add_argument("--e2e-poll-ms", type=float, default=20, help="GET interval while waiting for the fill")
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8650")))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated; e2e is always last")
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()

    if not os.environ.get("REDIS_URL"):
        sys.exit("bench/api.py needs Redis: REDIS_URL=redis://127.0.0.1:6379/N")
    wrk = ensure_wrk()
    bench_db, maintenance = bench_urls(os.environ.get("DATABASE_URL", ""))
    recreate_database(maintenance)
    env = {**os.environ, "DATABASE_URL": bench_db, "DJANGO_SETTINGS_MODULE": "bench.api_settings",
           "DJANGO_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "127.0.0.1,testserver",
           "SECURE_SSL_REDIRECT": "false", "SECURE_HSTS_SECONDS": "0", "LOG_LEVEL": "WARNING",
           "THROTTLE_RATE_KEY": "1000000/min", "THROTTLE_RATE_ANON": "1000000/min"}  # fmt: skip
    os.environ.update(env)
    import django

    django.setup()
    print(f"seeding {DB_NAME} ...", flush=True)
    seed_data = seed(buyers=max(args.connections, 4), providers=2, usage_batch=args.usage_batch)
    # The profiled requests run here, before the load, on the same data.
    profile = query_profile(seed_data)

    from django.db import connections

    connections.close_all()
    p = seed_data["providers"][0]
    env.update({
        "BENCH_WRK_DIR": str(WRK_DIR), "BENCH_SYMBOL": seed_data["symbol"], "BENCH_RUN": secrets.token_hex(4),
        "BENCH_KEYS": ",".join(seed_data["buyer_keys"]), "BENCH_USAGE_BATCH": str(args.usage_batch),
        "BENCH_USAGE": f"{p['key']}|{p['buyer']}|{p['contract']}|{p['timestamp']}",
    })  # fmt: skip
    host = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="ciyuan-bench-api-") as tmpdir:
        tmp = Path(tmpdir)
        web = start([sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{args.port}",
                     "--workers", str(args.web_workers), "--timeout", "60"], env, tmp / "gunicorn.log")  # fmt: skip
        workers = start([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork",
                         "--concurrency", str(args.celery_workers), "--loglevel", "WARNING", "--without-gossip",
                         "--without-mingle", "--without-heartbeat"], env, tmp / "celery.log")  # fmt: skip
        results: dict[str, dict] = {}
        e2e = None
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        try:
            wait_http(f"{host}/bench/ceiling")
            for scenario in args.scenarios.split(","):
                print(f"load: {scenario}, {args.connections} connections, {args.seconds}s ...", flush=True)
                results[scenario] = run_wrk(
                    wrk, scenario, host=host, connections=args.connections, seconds=args.seconds, env=env
                )
            from marketplace.models import Order

            def drain() -> int:
                deadline = time.monotonic() + 180
                while Order.objects.filter(pending_match=True).exists() and time.monotonic() < deadline:
                    time.sleep(0.5)
                return Order.objects.filter(pending_match=True).count()

            drain()  # the end-to-end part starts with nothing queued
            connections.close_all()
            if not args.no_e2e:
                print(f"end to end: {args.e2e_rate:.0f} orders/s for {args.e2e_seconds:.0f}s ...", flush=True)
                e2e = run_end_to_end(host=host, symbol=seed_data["symbol"], keys=seed_data["e2e_keys"],
                                     rate=args.e2e_rate, seconds=args.e2e_seconds, poll_ms=args.e2e_poll_ms)  # fmt: skip
            pending = drain()
            uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        finally:
            stop(web)
            stop(workers)
        from tests.invariants import assert_invariants

        assert_invariants()

    print(f"\n{args.connections} wrk connections, {args.web_workers} gunicorn workers, one Celery worker "
          f"({args.celery_workers} process(es)), {args.seconds}s per scenario")  # fmt: skip
    print(f"uptime before: {uptime}\nuptime after:  {uptime_after}")
    print(f"{'scenario':<15} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'vs ceiling':>16} {'queries':>8}")
    queries = dict(profile)
    for name, r in results.items():
        ceiling_name = CEILING_OF.get(name)
        ceiling = results.get(ceiling_name, {}).get("rps") if ceiling_name else None
        ratio = f"{r['rps'] / ceiling:.2f}x {ceiling_name.split('-')[1]}" if ceiling else "-"
        print(f"{name:<15} {r['rps']:>9.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['failures']:>7} {ratio:>16} "
              f"{queries.get(name, '-'):>8}")  # fmt: skip
    if "usage" in results:
        print(f"usage events/s: {results['usage']['rps'] * args.usage_batch:,.0f}")
    if e2e:
        print(f"end to end at {e2e['rate']:.0f} orders/s ({e2e['orders']} orders, {e2e['filled']} filled, "
              f"{e2e['error_count']} errors): answered -> fill visible p50 {e2e['p50']:.0f} ms, p99 {e2e['p99']:.0f} ms "
              f"(POST answered in p50 {e2e['answer_p50']:.0f} ms, p99 {e2e['answer_p99']:.0f} ms; "
              f"polled every {args.e2e_poll_ms:.0f} ms)")  # fmt: skip
        for err in e2e["errors"]:
            print(f"  e2e error: {err}")
    print("commands:")
    for r in results.values():
        print(f"  {r['cmd']}")
    print(f"orders still pending after the drain: {pending}; invariants hold")


if __name__ == "__main__":
    main()
