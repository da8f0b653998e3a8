"""Benchmark: the REST API under load, beside the smallest DRF endpoint served the same way.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_h6 REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python bench/api.py [--seconds 15] [--users 16] [--web-workers 3]

In its own PostgreSQL database (ciyuan_bench_api on the DATABASE_URL server, dropped and
recreated each run) it migrates, seeds an instrument with a resting book, buyers with funds
and keys, providers with contracts, then starts gunicorn (--web-workers processes, production
settings, bench/api_settings.py adds only /bench/ceiling) and real Celery workers on Redis.
Load comes from a separate, bounded locust process (headless, closed loop, --users clients,
--seconds per scenario): the ceiling (a DRF view with no auth, throttle or query), book reads,
order placement (each order escrowed, committed and queued for matching) and usage ingestion
(batches of --usage-batch events). It prints requests/s, p50 and p99 per scenario and the
ratio to the ceiling, then the query count of one request of each kind (the hot-path profile),
and checks the invariants after the matchers have drained the queue.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DB_NAME = "ciyuan_bench_api"
SCENARIOS = ["ceiling", "book", "orders", "usage"]


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
    return {"symbol": inst.symbol, "buyer_keys": buyer_keys, "providers": provider_rows, "usage_batch": usage_batch}


def query_profile(seed_data: dict) -> list[tuple[str, int]]:
    """Queries one request of each kind runs (through the test client, same code path)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    p = seed_data["providers"][0]
    calls = [
        ("ceiling", "get", "/bench/ceiling", None, None),
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
        with CaptureQueriesContext(connection) as ctx:
            kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
            r = getattr(client, method)(path, **kwargs, **headers)
        assert r.status_code < 300, (name, r.status_code, r.content[:300])
        out.append((name, len(ctx.captured_queries)))
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


def run_locust(scenario: str, *, host: str, users: int, seconds: int, env: dict, tmp: Path) -> dict:
    prefix = tmp / scenario
    cmd = [sys.executable, "-m", "locust", "-f", str(BASE_DIR / "bench" / "locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", host, "--csv", str(prefix),
           "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"]  # fmt: skip
    result = subprocess.run(cmd, cwd=BASE_DIR, env={**env, "BENCH_SCENARIO": scenario}, capture_output=True,
                            text=True, timeout=seconds + 120)  # fmt: skip
    with open(f"{prefix}_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    row = rows.get(scenario)
    if row is None:
        sys.exit(f"locust produced no stats for {scenario}:\n{result.stderr[-3000:]}")
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50": float(row["50%"]),
        "p99": float(row["99%"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=15, help="load per scenario (bounded)")
    ap.add_argument("--users", type=int, default=16, help="concurrent clients (closed loop)")
    ap.add_argument("--web-workers", type=int, default=3, help="gunicorn worker processes")
    ap.add_argument("--celery-workers", type=int, default=2)
    ap.add_argument("--usage-batch", type=int, default=50, help="events per usage request")
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8650")))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = ap.parse_args()

    if not os.environ.get("REDIS_URL"):
        sys.exit("bench/api.py needs Redis: REDIS_URL=redis://127.0.0.1:6379/N")
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
    seed_data = seed(buyers=max(args.users, 4), providers=max(args.users // 2, 2), usage_batch=args.usage_batch)
    # The profiled requests run here, before the load, on the same data.
    profile = query_profile(seed_data)

    from django.db import connections

    connections.close_all()
    with tempfile.TemporaryDirectory(prefix="ciyuan-bench-api-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "seed.json").write_text(json.dumps(seed_data))
        env["BENCH_SEED"] = str(tmp / "seed.json")
        host = f"http://127.0.0.1:{args.port}"
        web = start([sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{args.port}",
                     "--workers", str(args.web_workers), "--timeout", "60"], env, tmp / "gunicorn.log")  # fmt: skip
        workers = start([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork",
                         "--concurrency", str(args.celery_workers), "--loglevel", "WARNING", "--without-gossip",
                         "--without-mingle", "--without-heartbeat"], env, tmp / "celery.log")  # fmt: skip
        results = {}
        try:
            wait_http(f"{host}/bench/ceiling")
            for scenario in args.scenarios.split(","):
                print(f"load: {scenario}, {args.users} clients, {args.seconds}s ...", flush=True)
                results[scenario] = run_locust(
                    scenario, host=host, users=args.users, seconds=args.seconds, env=env, tmp=tmp
                )
            # Let the matchers drain what the order scenario queued, then check the books.
            from marketplace.models import Order

            deadline = time.monotonic() + 120
            while Order.objects.filter(pending_match=True).exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            pending = Order.objects.filter(pending_match=True).count()
        finally:
            stop(web)
            stop(workers)
        from tests.invariants import assert_invariants

        assert_invariants()

    ceiling = results.get("ceiling", {}).get("rps")
    extra = f", {args.usage_batch} events per usage request"
    print(f"\n{args.users} clients, {args.web_workers} gunicorn workers, {args.celery_workers} Celery processes{extra}")
    print(f"{'scenario':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'vs ceiling':>11} {'queries':>8}")
    queries = dict(profile)
    for name, r in results.items():
        ratio = f"{r['rps'] / ceiling:.1%}" if ceiling else "-"
        print(f"{name:<10} {r['rps']:>9.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} {r['failures']:>7} {ratio:>11} "
              f"{queries.get(name, '-'):>8}")  # fmt: skip
    if "usage" in results:
        print(f"usage events/s: {results['usage']['rps'] * args.usage_batch:,.0f}")
    print(f"orders still pending after the drain: {pending}; invariants hold")


if __name__ == "__main__":
    main()
