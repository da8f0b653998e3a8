"""Benchmark: the settlement report and reconciliation over 100,000 settled contracts and
1,000,000 usage events on PostgreSQL, against a `SELECT count(*)` of the same usage table.

    .venv/bin/python bench/report.py                      # full scale, own bench database
    .venv/bin/python bench/report.py --contracts 10000 --events 100000   # quicker
    .venv/bin/python bench/report.py --reuse              # keep data loaded by a previous run

The bench database (BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/ciyuan_bench_report)
is created if missing, migrated, emptied and bulk-loaded with COPY (with progress bars):
catalog, 50 providers, 200 buyers, 30 delivery days x 4 tiers x 5 regions = 600 instruments,
two filled orders and one settled contract per trade, a balanced ledger (a deposit and an
escrow reservation per buyer, one settlement transaction of 4 legs per contract) and usage
events whose billable tokens per pair add up to delivered + overage, so the books reconcile.

Printed figures are ratios against the ceiling measured in the same run: one
`SELECT count(*) FROM metering_usageevent` (best of 3, warm cache). The report is a GROUP BY
over the settled contracts; the reconciliation also reads every usage event and ledger entry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/ciyuan_bench_report"
PROVIDERS, BUYERS, DAYS = 50, 200, 30
CENT = Decimal("0.01")
M = 1_000_000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    p.add_argument("--contracts", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each measurement (best is kept)")
    p.add_argument("--reuse", action="store_true", help="skip loading when the database already has this scale")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    import django

    django.setup()


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# --- loading ------------------------------------------------------------------------------


def copy_rows(model, columns: list[str], rows, total: int, desc: str) -> None:
    """COPY rows (tuples in `columns` order) into the model's table, with a progress bar."""
    from django.db import connection
    from tqdm import tqdm

    table = model._meta.db_table
    cols = ", ".join(f'"{c}"' for c in columns)
    with connection.cursor() as cur, cur.cursor.copy(f'COPY "{table}" ({cols}) FROM STDIN') as copy:
        for row in tqdm(rows, total=total, desc=desc, unit="row", mininterval=1, file=sys.stderr):
            copy.write_row(row)


def load(args: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection, transaction

    from marketplace.models import Account, Hardware, Instrument, InstrumentBook, Order, Region, Tier, Trade
    from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction, Settlement, UsageEvent

    rnd = random.Random(args.seed)
    tables = [
        m._meta.db_table
        for m in (
            UsageEvent,
            Settlement,
            LedgerEntry,
            LedgerTransaction,
            LedgerAccount,
            Trade,
            Order,
            InstrumentBook,
            Instrument,
            Account,
        )
    ]
    with connection.cursor() as cur:
        cur.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    call_command("seed_catalog", verbosity=0)

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start_day = now.date() - dt.timedelta(days=DAYS + 1)
    tiers = list(Tier.objects.order_by("pk"))
    regions = list(Region.objects.order_by("pk"))
    h100 = Hardware.objects.get(code="h100").pk
    share = {t.pk: t.unused_capacity_share for t in tiers}

    with transaction.atomic():
        accounts = [
            Account(name=f"Provider {i}", slug=f"provider-{i}", is_buyer=False, is_provider=True)
            for i in range(PROVIDERS)
        ]
        accounts += [
            Account(name=f"Buyer {i}", slug=f"buyer-{i}", is_buyer=True, is_provider=False) for i in range(BUYERS)
        ]
        Account.objects.bulk_create(accounts)
        providers = [a.pk for a in accounts[:PROVIDERS]]
        buyers = [a.pk for a in accounts[PROVIDERS:]]
        instruments = []
        for d in range(DAYS):
            day = start_day + dt.timedelta(days=d)
            s, e = Instrument.period_for(day)
            for tier in tiers:
                for region in regions:
                    instruments.append(
                        Instrument(
                            tier=tier,
                            region=region,
                            delivery_date=day,
                            delivery_start=s,
                            delivery_end=e,
                            status="settled",
                        )
                    )
        Instrument.objects.bulk_create(instruments)
        InstrumentBook.objects.bulk_create([InstrumentBook(instrument=i) for i in instruments])
        inst_info = [(i.pk, i.tier_id, i.delivery_start) for i in instruments]
        n_inst = len(instruments)
        inst_tier = {pk: tier_id for pk, tier_id, _ in inst_info}

        # Contract i: instrument i % n, and a (buyer, provider) pair unique within it.
        contracts = []
        for i in range(args.contracts):
            inst_id, tier_id, start = inst_info[i % n_inst]
            k = i // n_inst
            buyer, seller = buyers[k % BUYERS], providers[(k // BUYERS + k) % PROVIDERS]
            qty = rnd.randint(1, 50) * M
            price = Decimal(rnd.randint(30, 900)) / 100
            delivered = qty * rnd.randint(0, 100) // 100
            overage = rnd.choice((0,) * 19 + (rnd.randint(1, 5) * M // 2,))
            value_full = (Decimal(qty) * price / M).quantize(CENT, rounding=ROUND_CEILING)
            escrow = value_full + (value_full * 10 / 10_000).quantize(CENT, rounding=ROUND_CEILING)
            paid = Decimal(delivered) + share[tier_id] * (qty - delivered)
            value = (paid * price / M).quantize(CENT, rounding=ROUND_HALF_EVEN)
            bfee = (value * 10 / 10_000).quantize(CENT, rounding=ROUND_HALF_EVEN)
            sfee = (value * 5 / 10_000).quantize(CENT, rounding=ROUND_HALF_EVEN)
            contracts.append(
                (i + 1, inst_id, start, buyer, seller, qty, price, delivered, overage, escrow, value, bfee, sfee)
            )

        executed = now - dt.timedelta(days=1)
        order_cols = [
            "id",
            "account_id",
            "instrument_id",
            "side",
            "quantity",
            "price",
            "time_in_force",
            "hardware_id",
            "allowed_hardware",
            "status",
            "filled_quantity",
            "sequence",
            "pending_match",
            "allowed_hardware_ids",
            "maker_fee_bps",
            "taker_fee_bps",
            "unused_capacity_share",
            "output_token_weight",
            "cached_input_weight",
            "below_energy_floor",
            "status_reason",
            "created_at",
            "updated_at",
        ]

        def orders():
            for cid, inst_id, _, buyer, seller, qty, price, *_ in contracts:
                common = (qty, price, "gtc")
                yield (
                    2 * cid - 1,
                    buyer,
                    inst_id,
                    "buy",
                    *common,
                    None,
                    "[]",
                    "filled",
                    qty,
                    2 * cid - 1,
                    False,
                    "[]",
                    5,
                    10,
                    share[inst_tier[inst_id]],
                    Decimal("1"),
                    Decimal("1"),
                    False,
                    "",
                    executed,
                    executed,
                )
                yield (
                    2 * cid,
                    seller,
                    inst_id,
                    "sell",
                    *common,
                    h100,
                    "[]",
                    "filled",
                    qty,
                    2 * cid,
                    False,
                    "[]",
                    5,
                    10,
                    share[inst_tier[inst_id]],
                    Decimal("1"),
                    Decimal("1"),
                    False,
                    "",
                    executed,
                    executed,
                )

        copy_rows(Order, order_cols, orders(), 2 * len(contracts), "orders")
        trade_cols = [
            "id",
            "instrument_id",
            "buy_order_id",
            "sell_order_id",
            "buyer_id",
            "seller_id",
            "hardware_id",
            "quantity",
            "price",
            "aggressor_side",
            "match_sequence",
            "buyer_fee_bps",
            "seller_fee_bps",
            "buyer_escrow",
            "unused_capacity_share",
            "output_token_weight",
            "cached_input_weight",
            "executed_at",
        ]
        copy_rows(
            Trade,
            trade_cols,
            (
                (c[0], c[1], 2 * c[0] - 1, 2 * c[0], c[3], c[4], h100, c[5], c[6], "buy", c[0], 10, 5, c[9],
                 share[inst_tier[c[1]]], Decimal("1"), Decimal("1"), executed)
                for c in contracts
            ),
            len(contracts),
            "contracts",
        )

        # Ledger: accounts with their final balances, a deposit + reservation per buyer, and a
        # settlement transaction per contract (escrow -> refund, payout, fees).
        cur_code = "CNY"
        la_id = {}
        la_rows = []
        for owner in providers + buyers:
            for kind in ("available", "escrow", "owed"):
                la_id[(owner, kind)] = len(la_rows) + 1
                la_rows.append((owner, kind))
        la_id[(None, "deposits")] = len(la_rows) + 1
        la_rows.append((None, "deposits"))
        la_id[(None, "fees")] = len(la_rows) + 1
        la_rows.append((None, "fees"))
        balance = {i: Decimal("0.00") for i in range(1, len(la_rows) + 1)}
        escrow_by_buyer = {b: Decimal("0.00") for b in buyers}
        for c in contracts:
            escrow_by_buyer[c[3]] += c[9]

        txn_rows, entry_rows = [], []

        def post(key: str, kind: str, legs: list[tuple[int, Decimal]]) -> int:
            txn_id = len(txn_rows) + 1
            txn_rows.append((txn_id, key, kind, "", executed))
            for acc, amount in legs:
                if amount:
                    balance[acc] += amount
                    entry_rows.append((txn_id, acc, amount, balance[acc], executed))
            return txn_id

        for b in buyers:
            funding = escrow_by_buyer[b] + Decimal("1000.00")
            post(
                f"deposit:bench:{b}",
                "deposit",
                [(la_id[(None, "deposits")], -funding), (la_id[(b, "available")], funding)],
            )
            post(
                f"reserve:bench:{b}",
                "escrow_reserve",
                [(la_id[(b, "available")], -escrow_by_buyer[b]), (la_id[(b, "escrow")], escrow_by_buyer[b])],
            )
        settle_txn = {}
        for cid, _, _, buyer, seller, _qty, _price, _delivered, _overage, escrow, value, bfee, sfee in contracts:
            settle_txn[cid] = post(
                f"settle:{cid}",
                "settlement",
                [
                    (la_id[(buyer, "escrow")], -escrow),
                    (la_id[(buyer, "available")], escrow - value - bfee),
                    (la_id[(seller, "available")], value - sfee),
                    (la_id[(None, "fees")], bfee + sfee),
                ],
            )
        copy_rows(
            LedgerAccount,
            ["id", "owner_id", "kind", "currency", "is_system", "balance"],
            ((i + 1, o, k, cur_code, o is None, balance[i + 1]) for i, (o, k) in enumerate(la_rows)),
            len(la_rows),
            "ledger accounts",
        )
        copy_rows(
            LedgerTransaction,
            ["id", "key", "kind", "memo", "created_at"],
            txn_rows,
            len(txn_rows),
            "ledger transactions",
        )
        with connection.cursor() as cur:
            # The rows are balanced by construction; the per-row deferred check would re-sum
            # every transaction at commit, which is not what this benchmark measures.
            cur.execute("ALTER TABLE metering_ledgerentry DISABLE TRIGGER ledger_entry_balanced")
        copy_rows(
            LedgerEntry,
            ["transaction_id", "account_id", "amount", "balance_after", "created_at"],
            entry_rows,
            len(entry_rows),
            "ledger entries",
        )
        with connection.cursor() as cur:
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")  # run the queued FK checks first
            cur.execute("ALTER TABLE metering_ledgerentry ENABLE TRIGGER ledger_entry_balanced")
            cur.execute("SET CONSTRAINTS ALL DEFERRED")

        settlement_cols = [
            "trade_id",
            "delivered_tokens",
            "unused_tokens",
            "value",
            "buyer_fee",
            "seller_fee",
            "provider_payout",
            "refund",
            "overage_tokens",
            "transaction_id",
            "settled_at",
        ]
        copy_rows(
            Settlement,
            settlement_cols,
            (
                (
                    c[0],
                    c[7],
                    c[5] - c[7],
                    c[10],
                    c[11],
                    c[12],
                    c[10] - c[12],
                    c[9] - c[10] - c[11],
                    c[8],
                    settle_txn[c[0]],
                    now,
                )
                for c in contracts
            ),
            len(contracts),
            "settlements",
        )

        # Usage: each contract's delivered + overage tokens split over its share of the events.
        per_contract = max(1, args.events // len(contracts))
        extra = args.events - per_contract * len(contracts)

        def events():
            n = 0
            for idx, c in enumerate(contracts):
                cid, inst_id, start, buyer, seller, *_ = c
                tokens = c[7] + c[8]
                k = per_contract + (1 if idx < extra else 0)
                base, rest = divmod(tokens, k)
                for j in range(k):
                    billable = base + (1 if j < rest else 0)
                    n += 1
                    at = start + dt.timedelta(seconds=(n * 7) % 86_000)
                    yield (seller, buyer, inst_id, f"e{cid}-{j}", at, billable, 0, 0, billable, "0" * 64, now)

        usage_cols = [
            "provider_id",
            "buyer_id",
            "instrument_id",
            "event_id",
            "occurred_at",
            "input_tokens",
            "cached_input_tokens",
            "output_tokens",
            "billable_tokens",
            "payload_hash",
            "received_at",
        ]
        copy_rows(UsageEvent, usage_cols, events(), args.events, "usage events")
        with connection.cursor() as cur:
            for model in (Order, Trade, LedgerAccount, LedgerTransaction, LedgerEntry):
                table = model._meta.db_table
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM \"{table}\"))"
                )
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    print(
        json.dumps(
            {"loaded": {"contracts": len(contracts), "usage_events": args.events, "ledger_entries": len(entry_rows)}}
        )
    )


def loaded_scale() -> tuple[int, int]:
    from metering.models import Settlement, UsageEvent

    return Settlement.objects.count(), UsageEvent.objects.count()


def main() -> None:
    args = parse_args()
    setup_django(args.database_url)
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    if not settings.IS_POSTGRES:
        sys.exit("bench/report.py runs on PostgreSQL only")
    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    if not (args.reuse and loaded_scale() == (args.contracts, args.events)):
        load(args)
    load_seconds = time.perf_counter() - t0

    from io import StringIO

    from metering import reports

    def count_usage():
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM metering_usageevent")
            return cur.fetchone()[0]

    assert count_usage() == args.events
    count_usage()  # warm the cache
    ceiling = best_of(args.repeat, count_usage)

    everything = reports.ReportFilters()
    figures: dict[str, float] = {}
    for group_by in reports.GroupBy.VALUES:
        figures[f"report by {group_by}"] = best_of(
            args.repeat, lambda g=group_by: reports.settlement_report_get(filters=everything, group_by=g)
        )
    report = reports.settlement_report_get(filters=everything, group_by="provider")
    assert report.totals.contracts == args.contracts
    figures["reconciliation"] = best_of(args.repeat, lambda: reports.reconciliation_get(filters=everything))
    rec = reports.reconciliation_get(filters=everything)
    assert rec.ok, "the loaded books should reconcile"
    days = sorted({p.day for p in report.daily})
    figures["command --group-by provider --format csv"] = best_of(
        1,
        lambda: call_command(
            "settlement_report",
            "--from",
            str(days[0]),
            "--to",
            str(days[-1]),
            "--group-by",
            "provider",
            "--format",
            "csv",
            "--no-progress",
            stdout=StringIO(),
        ),
    )

    print(f"scale: {args.contracts:,} settled contracts, {args.events:,} usage events (load {load_seconds:.1f} s)")
    print(f"ceiling: SELECT count(*) over usage events  {ceiling * 1000:9.1f} ms   1.0x")
    for name, seconds in figures.items():
        print(f"{name:<45} {seconds * 1000:9.1f} ms  {seconds / ceiling:5.1f}x count(*)")
    print(f"report totals: gross {report.totals.gross_value}, fees {report.totals.fees}, reconciliation ok={rec.ok}")


if __name__ == "__main__":
    main()
