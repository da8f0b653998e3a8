"""Usage ingestion through the HTTP API vs. PostgreSQL COPY of the same rows, in one run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_h2 REDIS_URL=redis://127.0.0.1:6379/2 \
        .venv/bin/python bench/ingest.py [--events 100000] [--batch 1000] [--clients 4] [--workers 3]

Starts gunicorn (127.0.0.1:--port, stopped by PID at the end), creates a fresh provider, buyer
and contract on a spot instrument, then posts --events usage events in batches of --batch from
--clients concurrent keep-alive connections: every event validated, priced with tier weights
and inserted exactly once. The ceiling is COPY of the same number of rows (already computed,
no validation, no dedupe) into the same table, measured right after. Bounded: --timeout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    ap.add_argument("--port", type=int, default=8201)
    ap.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    args = ap.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    if not settings.IS_POSTGRES:
        sys.exit("bench/ingest.py needs PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)
    call_command("seed_catalog", verbosity=0)

    from marketplace import services
    from marketplace.models import Region, Tier
    from metering.models import UsageEvent
    from metering.services import funds_deposit
    from pricing.services import instrument_match

    run = uuid.uuid4().hex[:8]
    now = timezone.now()
    inst = services.instrument_create(tier=Tier.objects.get(code="standard"), region=Region.objects.get(code="cn-west-1"), day=now.date())
    # A spot window around now whatever the real period (the bench must not depend on the hour).
    type(inst).objects.filter(pk=inst.pk).update(
        delivery_start=now - dt.timedelta(hours=1), delivery_end=now + dt.timedelta(hours=3), status="open"
    )
    inst.refresh_from_db()
    buyer = services.account_create(name=f"bench buyer {run}", is_buyer=True)
    provider = services.account_create(name=f"bench provider {run}", is_buyer=False, is_provider=True)
    funds_deposit(account=buyer, amount=__import__("decimal").Decimal("100000"))
    services.order_place(account=provider, instrument=inst, side="sell", quantity=10_000_000_000, price=__import__("decimal").Decimal("1.00"), hardware="h100")
    services.order_place(account=buyer, instrument=inst, side="buy", quantity=10_000_000_000, price=__import__("decimal").Decimal("1.00"))
    instrument_match(instrument_id=inst.pk)
    _, key = services.api_key_create(account=provider, scopes=["meter"])
    ts = (timezone.now() + dt.timedelta(seconds=1)).isoformat().replace("+00:00", "Z")

    def batch(i: int) -> bytes:
        import json

        return json.dumps(
            {
                "events": [
                    {
                        "event_id": f"{run}-{i}-{j}",
                        "buyer": buyer.slug,
                        "instrument": inst.symbol,
                        "timestamp": ts,
                        "usage": {
                            "prompt_tokens": 1000 + j,
                            "completion_tokens": 200,
                            "prompt_tokens_details": {"cached_tokens": 100},
                        },
                    }
                    for j in range(args.batch)
                ]
            }
        ).encode()

    n_batches = max(1, args.events // args.batch)
    bodies = [batch(i) for i in range(n_batches)]
    connection.close()

    env = dict(os.environ, DEBUG="false", THROTTLE_RATE_KEY="1000000/min", PYTHONUNBUFFERED="1")
    log_path = BASE_DIR / "var" / f"bench-ingest-gunicorn-{run}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{args.port}",
             "--workers", str(args.workers), "--worker-class", "gthread", "--threads", "2", "--timeout", "120"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        import requests

        url = f"http://127.0.0.1:{args.port}/api/v1/usage"
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{args.port}/api/v1/tiers", timeout=10)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"gunicorn did not start; see {log_path}")
                time.sleep(0.2)

        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        # Warm every worker (imports, connections) outside the timing.
        warm = requests.Session()
        for _ in range(args.workers * 2):
            warm.post(url, data=b'{"events": []}', headers=headers, timeout=30)

        next_batch = iter(range(n_batches))
        lock = threading.Lock()
        accepted = [0]
        errors: list[str] = []
        done = [0]
        stop_at = time.monotonic() + args.timeout

        def client() -> None:
            s = requests.Session()
            while time.monotonic() < stop_at:
                with lock:
                    i = next(next_batch, None)
                if i is None:
                    return
                r = s.post(url, data=bodies[i], headers=headers, timeout=120)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    return
                with lock:
                    accepted[0] += r.json()["accepted"]
                    done[0] += 1
                    if done[0] % max(1, n_batches // 10) == 0:
                        print(f"  api: {done[0]}/{n_batches} batches", flush=True)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        api_s = time.perf_counter() - t0
        if errors:
            sys.exit(f"API errors: {errors[:3]}")
        if accepted[0] != n_batches * args.batch:
            sys.exit(f"accepted {accepted[0]} of {n_batches * args.batch} (timeout?)")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

    # The ceiling: COPY of as many rows, already computed, into the same table.
    import psycopg

    s = connection.settings_dict
    total = n_batches * args.batch
    rows = [
        (provider.pk, buyer.pk, inst.pk, f"{run}-copy-{k}", now, 1000, 100, 200, 1525, "0" * 64, now)
        for k in range(total)
    ]
    with psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"], password=s["PASSWORD"] or None, dbname=s["NAME"]) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            "COPY metering_usageevent (provider_id, buyer_id, instrument_id, event_id, occurred_at, input_tokens, "
            "cached_input_tokens, output_tokens, billable_tokens, payload_hash, received_at) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        copy_s = time.perf_counter() - t0

    stored = UsageEvent.objects.filter(provider=provider).count()
    api_rate, copy_rate = total / api_s, total / copy_s
    print(f"events: {total:,} in batches of {args.batch:,}; {args.clients} clients; gunicorn {args.workers} workers x 2 threads")
    print(f"API  : {api_rate:,.0f} events/s ({api_s:.1f} s)")
    print(f"COPY : {copy_rate:,.0f} rows/s ({copy_s:.1f} s)")
    print(f"ratio: API / COPY = {api_rate / copy_rate:.2f} (aim >= 0.33); rows stored {stored:,}")


if __name__ == "__main__":
    main()
