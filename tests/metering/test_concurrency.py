"""Real concurrency on PostgreSQL: several clients, processes and Celery workers at once.

- the same usage batch posted by several clients at the same moment is counted once;
- settlement run by several processes (and by several Celery workers) settles each contract once;
- a settlement process killed with SIGKILL in the middle of a transaction leaves nothing
  half-written, and a re-run completes the work.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal

import psycopg
import pytest
from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from marketplace.models import Instrument, Trade
from metering.ledger import ledger_accounts_ensure
from metering.models import LedgerTransaction, Settlement, UsageEvent
from metering.settlement import settlements_run_due
from metering.usage import usage_ingest
from tests import factories, workers
from tests.conftest import api_client_for
from tests.invariants import assert_invariants
from tests.workers import celery_workers  # noqa: F401, F811 (fixture)

from . import reference
from .builders import contract, event, spot_instrument

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BASE_DIR = settings.BASE_DIR


def _market(n_pairs: int, *, contracts_per_pair: int = 1, tier: str = "standard") -> tuple[Instrument, list[Trade]]:
    """n buyer-provider pairs trading on one spot instrument, each with some usage."""
    factories.seed_catalog()
    inst = spot_instrument(tier=tier)
    trades = []
    for i in range(n_pairs):
        buyer = factories.AccountFactory(is_buyer=True)
        provider = factories.AccountFactory(is_buyer=False, is_provider=True)
        factories.fund(buyer, Decimal("1000.00"))
        for _ in range(contracts_per_pair):
            trades.append(contract(buyer, provider, inst, 2, "1.50"))
        usage_ingest(provider=provider, events=[event(buyer, inst, prompt=300_000 * (i + 1)) for _ in range(3)])
    return inst, trades


def _make_due(inst: Instrument) -> None:
    """Move the delivery period into the past, beyond the grace period: settlement is due now."""
    end = timezone.now() - dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS + 1)
    Instrument.objects.filter(pk=inst.pk).update(delivery_start=end - dt.timedelta(days=1), delivery_end=end)


def _expected(trades: list[Trade]) -> dict[int, Decimal]:
    """What each contract must pay: the independent reference (tests/metering/reference.py) on
    the contracts' terms and the billable tokens recomputed from each stored event's raw counts."""
    for t in trades:
        t.refresh_from_db()
    contracts = [
        reference.Contract(t.pk, (t.instrument_id, t.buyer_id, t.seller_id), t.match_sequence, t.quantity, t.price,
                           t.buyer_fee_bps, t.seller_fee_bps, t.buyer_escrow)  # fmt: skip
        for t in trades
    ]
    usage: dict[tuple, int] = {}
    for e in UsageEvent.objects.select_related("instrument__tier"):
        tier = e.instrument.tier
        tokens = reference.billable(prompt=e.input_tokens, cached=e.cached_input_tokens, completion=e.output_tokens,
                                    cached_weight=tier.cached_input_weight, output_weight=tier.output_token_weight)  # fmt: skip
        key = (e.instrument_id, e.buyer_id, e.provider_id)
        usage[key] = usage.get(key, 0) + tokens
    out = {}
    for inst_id in {t.instrument_id for t in trades}:
        share = next(t for t in trades if t.instrument_id == inst_id).instrument.tier.unused_capacity_share
        pays, _ = reference.settle([c for c in contracts if c.pair[0] == inst_id], usage, share)
        out.update({k: p.value for k, p in pays.items()})
    return out


def _assert_settled_once(trades: list[Trade]) -> None:
    expected = _expected(trades)
    assert Settlement.objects.count() == len(trades)
    keys = Counter(LedgerTransaction.objects.filter(kind="settlement").values_list("key", flat=True))
    assert keys == Counter(f"settle:{t.pk}" for t in trades)
    for s in Settlement.objects.all():
        assert s.value == expected[s.trade_id]
    for t in trades:
        assert ledger_accounts_ensure(account=t.buyer)["escrow"].balance == 0
    assert_invariants()


def test_the_same_batch_posted_by_several_clients_at_once_counts_once(transactional_db):
    factories.seed_catalog()
    inst = spot_instrument()
    buyer = factories.AccountFactory(is_buyer=True)
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, Decimal("1000.00"))
    contract(buyer, provider, inst, 10, "1.50")
    batch = [event(buyer, inst, prompt=1000 + i, completion=i) for i in range(300)]
    clients = [api_client_for(provider, ("meter",)) for _ in range(5)]
    barrier = threading.Barrier(len(clients))
    results: list[list[str]] = [[] for _ in clients]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            r = clients[i].post("/api/v1/usage", {"events": batch}, format="json")
            assert r.status_code == 200, r.content
            results[i] = [x["status"] for x in r.json()["results"]]
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert UsageEvent.objects.count() == len(batch)
    for index in range(len(batch)):
        statuses = Counter(r[index] for r in results)
        assert statuses == {"accepted": 1, "duplicate": len(clients) - 1}, (index, statuses)
    assert sum(UsageEvent.objects.values_list("billable_tokens", flat=True)) == sum(
        (1000 + i) + 3 * i for i in range(300)
    )


def _settle_process(*extra: str) -> subprocess.Popen:
    env = workers.worker_env() if settings.REDIS_URL else dict(os.environ, DATABASE_URL=workers.test_database_url(), CONN_MAX_AGE="0")
    return subprocess.Popen(
        [sys.executable, "manage.py", "settle", *extra],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _reap(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        pytest.fail(f"settle process {proc.pid} did not finish:\n{out.decode(errors='replace')}")
    return out.decode(errors="replace")


def test_settlement_by_several_processes_at_once_settles_each_contract_once(transactional_db):
    inst, trades = _market(12, contracts_per_pair=2)
    _make_due(inst)
    procs = [_settle_process("--chunk", "3") for _ in range(4)]
    outputs = [_reap(p) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(int(o.rsplit("settled ", 1)[1].split(" ")[0]) for o in outputs) == len(trades)
    _assert_settled_once(trades)
    inst.refresh_from_db()
    assert inst.status == Instrument.Status.SETTLED


@pytest.mark.redis
@pytest.mark.workers
def test_settlement_tasks_on_several_celery_workers_settle_each_contract_once(celery_workers):  # noqa: F811
    from metering.tasks import settle_due, settle_instrument

    inst, trades = _market(10, contracts_per_pair=2)
    other, more = _market(6, tier="economy")
    _make_due(inst)
    _make_due(other)
    celery_workers(3)
    for _ in range(4):  # the same work queued several times, as retries and overlapping beats do
        settle_instrument.delay(inst.pk)
        settle_instrument.delay(other.pk)
        settle_due.delay()
    deadline = time.monotonic() + 90
    while Trade.objects.filter(settlement__isnull=True).exists():
        assert time.monotonic() < deadline, "settlement did not finish in 90 s"
        time.sleep(0.2)
    # Let the redundant tasks (and settle_due's fan-out) run too: they must find nothing to do.
    # Tasks are acks_late, so a task is acknowledged only once it has run: an empty queue with
    # nothing unacknowledged means every one of them has finished.
    from tests.reliability.procs import broker_idle

    _wait(broker_idle, timeout=90, what="every queued settlement task to finish")
    _assert_settled_once(trades + more)


def _wait(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_settlement_process_killed_mid_transaction_leaves_nothing_half_written(transactional_db):
    inst, trades = _market(6)
    _make_due(inst)
    # Pairs settle in (buyer, provider) order, two per transaction. Hold a lock on the buyer of
    # the third pair: the first chunk commits, the second blocks inside its transaction after
    # writing its ledger transactions. Then SIGKILL the process.
    third = sorted(trades, key=lambda t: (t.buyer_id, t.seller_id))[2]
    locked_id = ledger_accounts_ensure(account=third.buyer)["available"].pk
    dsn = workers.test_database_url()
    # (A separate autocommit connection watches: pg_stat_activity is a snapshot per transaction.)
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as monitor:
        holder.execute("SELECT id FROM metering_ledgeraccount WHERE id = %s FOR UPDATE", [locked_id])
        proc = _settle_process("--chunk", "2")
        try:

            def blocked() -> bool:
                row = monitor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE %s",
                    ["%metering_ledgeraccount%"],
                ).fetchone()
                return row[0] > 0

            _wait(blocked, timeout=60, what="the settle process to block on the held lock")
            assert Settlement.objects.count() == 2  # chunk one committed; chunk two in flight
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        holder.rollback()  # release the lock: the orphaned backend runs on, then finds no client

        def backend_gone() -> bool:
            return (
                monitor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND query ILIKE %s AND state <> 'idle'",
                    ["%metering_%"],
                ).fetchone()[0]
                == 0
            )

        _wait(backend_gone, timeout=30, what="the killed process's backend to end")
    connection.close()
    assert Settlement.objects.count() == 2
    assert LedgerTransaction.objects.filter(kind="settlement").count() == 2
    assert_invariants()  # escrow still covers the four unsettled contracts, ledger balanced

    report = settlements_run_due()
    assert report.contracts == 4
    _assert_settled_once(trades)
