"""Settlement throughput: contracts/s settling --contracts contracts with --events usage events.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ciyuan_h2 \
        .venv/bin/python bench/settle.py [--contracts 100000] [--events 1000000] [--scale 0.1]

Builds a past delivery day (so settlement is due) on --instruments instruments with --buyers
buyers and --providers providers: contracts between random pairs (each with its escrow held in
the ledger) and usage events on those pairs, loaded with COPY. Then runs the settlement
service (`settlements_run_due`, what `manage.py settle` runs) in this one process, with
progress. The ceiling, measured in the same run: COPY of the rows settlement writes (one
Settlement, one ledger transaction and four entries per contract) into bare temporary tables.
--scale multiplies --contracts and --events (e.g. 0.1 for a quick run). Bounded: --timeout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contracts", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--instruments", type=int, default=10)
    ap.add_argument("--buyers", type=int, default=500)
    ap.add_argument("--providers", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=2000, help="contracts per settlement transaction")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--slowest", type=int, default=0, help="print the N slowest SQL statements of the settlement")
    args = ap.parse_args()
    n_contracts = max(1, int(args.contracts * args.scale))
    n_events = max(1, int(args.events * args.scale))

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    if not settings.IS_POSTGRES:
        sys.exit("bench/settle.py needs PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)
    call_command("seed_catalog", verbosity=0)

    from marketplace.models import Account, Hardware, Instrument, InstrumentBook, Order, Region, Tier, Trade
    from metering import money
    from metering.ledger import Posting, ledger_account_ids, ledger_post_many, system_account
    from metering.models import LedgerAccount, Settlement
    from metering.settlement import settlements_run_due

    rng = random.Random(7)
    run = uuid.uuid4().hex[:8]
    t_build = time.perf_counter()
    print(f"building {n_contracts:,} contracts and {n_events:,} usage events ...", flush=True)
    # A past day nobody else uses: due for settlement now.
    day = dt.date(2001, 1, 1) + dt.timedelta(days=int(uuid.UUID(run + "0" * 24).int % 8000))
    tiers, regions = list(Tier.objects.all()), list(Region.objects.all())
    insts = []
    for k in range(args.instruments):
        tier, region = tiers[k % len(tiers)], regions[(k // len(tiers)) % len(regions)]
        start = dt.datetime.combine(day + dt.timedelta(days=k // (len(tiers) * len(regions))), dt.time.min, tzinfo=dt.UTC)
        inst = Instrument.objects.create(
            tier=tier, region=region, delivery_date=start.date(), delivery_start=start,
            delivery_end=start + dt.timedelta(days=1), status=Instrument.Status.CLOSED,
        )  # fmt: skip
        InstrumentBook.objects.create(instrument=inst)
        insts.append(inst)
    buyers = Account.objects.bulk_create(
        [Account(name=f"sb {run} {i}", slug=f"sb-{run}-{i}", is_buyer=True) for i in range(args.buyers)]
    )
    providers = Account.objects.bulk_create(
        [Account(name=f"sp {run} {i}", slug=f"sp-{run}-{i}", is_buyer=False, is_provider=True) for i in range(args.providers)]
    )
    h100 = Hardware.objects.get(code="h100")
    # One filled buy order per (instrument, buyer) and sell order per (instrument, provider).
    orders = {}
    seq = 0
    order_rows = []
    for inst in insts:
        for side, accts in (("buy", buyers), ("sell", providers)):
            for a in accts:
                seq += 1
                order_rows.append(Order(
                    account=a, instrument=inst, side=side, quantity=10**15, filled_quantity=0, price=Decimal("9.99"),
                    hardware=h100 if side == "sell" else None, sequence=seq, pending_match=False, status="open",
                ))  # fmt: skip
    for o in Order.objects.bulk_create(order_rows, batch_size=5000):
        orders[(o.instrument_id, o.side, o.account_id)] = o.pk
    fee = {True: settings.MAKER_FEE_BPS, False: settings.TAKER_FEE_BPS}
    trades, escrow_by_buyer = [], {}
    for i in range(n_contracts):
        inst = insts[i % len(insts)]
        b, p = rng.choice(buyers), rng.choice(providers)
        qty = rng.randint(1, 20) * inst.lot_size
        price = Decimal(rng.randint(50, 400)) / 100
        buyer_maker = rng.random() < 0.5
        escrow = money.contract_need(quantity=qty, price=price, fee_bps=fee[buyer_maker])
        escrow_by_buyer[b.pk] = escrow_by_buyer.get(b.pk, Decimal(0)) + escrow
        trades.append(Trade(
            instrument=inst, buy_order_id=orders[(inst.pk, "buy", b.pk)], sell_order_id=orders[(inst.pk, "sell", p.pk)],
            buyer=b, seller=p, hardware=h100, quantity=qty, price=price, aggressor_side="sell" if buyer_maker else "buy",
            match_sequence=i + 1, buyer_fee_bps=fee[buyer_maker], seller_fee_bps=fee[not buyer_maker],
            buyer_escrow=escrow, executed_at=inst.delivery_start,
        ))  # fmt: skip
    Trade.objects.bulk_create(trades, batch_size=5000)
    # Hold each buyer's contract escrow in the ledger: deposit, then available -> escrow.
    ledger_account_ids([b.pk for b in buyers], LedgerAccount.Kind.AVAILABLE)
    escr = ledger_account_ids([b.pk for b in buyers], LedgerAccount.Kind.ESCROW)
    ledger_account_ids([p.pk for p in providers], LedgerAccount.Kind.AVAILABLE)
    deposits = system_account(LedgerAccount.Kind.DEPOSITS).pk
    with transaction.atomic():
        ledger_post_many(postings=[
            Posting(key=f"bench:{run}:{b}", kind="deposit", legs=[(deposits, -amt), (escr[b], amt)])
            for b, amt in escrow_by_buyer.items()
        ])  # fmt: skip
    # Usage: events on random contracts' pairs (some pairs over-deliver: overage).
    pairs = [(t.instrument_id, t.buyer_id, t.seller_id) for t in trades]
    s = connection.settings_dict
    import psycopg

    conninfo = dict(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"], password=s["PASSWORD"] or None, dbname=s["NAME"])
    now = timezone.now()
    with psycopg.connect(**conninfo) as conn:
        with conn.cursor() as cur, cur.copy(
            "COPY metering_usageevent (provider_id, buyer_id, instrument_id, event_id, occurred_at, input_tokens, "
            "cached_input_tokens, output_tokens, billable_tokens, payload_hash, received_at) FROM STDIN"
        ) as copy:
            for k in range(n_events):
                inst_id, b, p = pairs[rng.randrange(len(pairs))]
                tokens = rng.randint(100_000, 3_000_000)
                copy.write_row((p, b, inst_id, f"{run}-{k}", day, tokens, 0, 0, tokens, "0" * 64, now))
        conn.commit()
    connection.close()
    del trades, pairs
    print(f"built in {time.perf_counter() - t_build:.0f} s; settling ...", flush=True)

    state = {"last": time.perf_counter(), "n": 0}

    def progress(symbol: str, report) -> None:
        state["n"] += 1
        if time.perf_counter() - state["last"] > 5:
            state["last"] = time.perf_counter()
            print(f"  {symbol}: {report.contracts:,} contracts of this instrument", flush=True)

    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        t0 = time.perf_counter()
        report = settlements_run_due(now=timezone.now(), chunk_contracts=args.chunk, progress=progress)
        settle_s = time.perf_counter() - t0
    for q in sorted(queries.captured_queries, key=lambda q: -float(q["time"]))[: args.slowest]:
        print(f"  {float(q['time']):.3f} s  {q['sql'][:160]}")
    settled = Settlement.objects.filter(trade__instrument__in=insts).count()
    if settled != n_contracts:
        sys.exit(f"settled {settled} of {n_contracts}")

    # The ceiling: COPY the rows settlement wrote (1 settlement + 1 transaction + 4 entries per
    # contract) into bare temporary tables: the write volume alone, no reads, no logic.
    with psycopg.connect(**conninfo) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE s_copy (LIKE metering_settlement)")
        cur.execute("CREATE TEMP TABLE t_copy (LIKE metering_ledgertransaction)")
        cur.execute("CREATE TEMP TABLE e_copy (LIKE metering_ledgerentry)")
        t1 = time.perf_counter()
        with cur.copy("COPY t_copy (id, key, kind, memo, created_at) FROM STDIN") as copy:
            for k in range(n_contracts):
                copy.write_row((k, f"settle:{k}", "settlement", "settlement of contract", now))
        with cur.copy("COPY e_copy (id, transaction_id, account_id, amount, balance_after, created_at) FROM STDIN") as copy:
            for k in range(n_contracts):
                for leg in range(4):
                    copy.write_row((4 * k + leg, k, leg, Decimal("1.00"), Decimal("1.00"), now))
        with cur.copy(
            "COPY s_copy (trade_id, delivered_tokens, unused_tokens, value, buyer_fee, seller_fee, provider_payout, "
            "refund, overage_tokens, transaction_id, settled_at) FROM STDIN"
        ) as copy:
            for k in range(n_contracts):
                copy.write_row((k, 1, 1, Decimal("1.00"), Decimal("0.01"), Decimal("0.01"), Decimal("0.99"), Decimal("1.00"), 0, k, now))
        conn.commit()
        copy_s = time.perf_counter() - t1

    rate, ceiling = n_contracts / settle_s, n_contracts / copy_s
    print(f"contracts: {n_contracts:,} on {len(insts)} instruments, {args.buyers} buyers x {args.providers} providers; "
          f"usage events: {n_events:,}; chunk {args.chunk}")  # fmt: skip
    print(f"settled  : {rate:,.0f} contracts/s ({settle_s:.1f} s); pairs {report.pairs:,}, "
          f"value {report.value}, fees {report.fees}, overage {report.overage_tokens:,} tokens")  # fmt: skip
    print(f"ceiling  : COPY of the same rows {ceiling:,.0f} contracts/s ({copy_s:.1f} s)")
    print(f"ratio    : settle / COPY = {rate / ceiling:.2f}")


if __name__ == "__main__":
    main()
