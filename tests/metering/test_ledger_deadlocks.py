"""Deadlock-free ledger on PostgreSQL (issue 12 item 6): several real processes place, cancel,
match, close and settle at once over the same accounts; no deadlock or serialization failure
reaches a caller and every invariant holds afterwards.

Every ledger transaction locks its accounts once, together, in ascending id order
(metering/ledger.py ledger_post_many): instrument_close posts all its releases in one call, and
order_cancel makes the matcher's posting and the canceller's in separate transactions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from marketplace.models import Instrument, Trade
from pricing.services import instrument_match
from tests import factories, workers
from tests.invariants import assert_invariants

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PROCESSES = 4
OPERATIONS = 60


def _spawn(seed: int, accounts: list[int], open_ids: list[int], due_ids: list[int]) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=workers.test_database_url(), CONN_MAX_AGE="0", REDIS_URL="")
    args = [",".join(map(str, ids)) for ids in (accounts, open_ids, due_ids)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.metering.ledger_stress", str(seed), str(OPERATIONS), *args],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _reap(proc: subprocess.Popen) -> dict:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail(f"stress process {proc.pid} did not finish (a deadlock would have been detected by PostgreSQL)")
    assert proc.returncode == 0, err.decode(errors="replace")
    return json.loads(out.decode().strip().splitlines()[-1])


def test_random_concurrent_placements_cancels_closes_and_settlements_never_deadlock(transactional_db):
    factories.seed_catalog()
    tomorrow = timezone.now().date() + dt.timedelta(days=2)
    open_ids = [
        factories.open_instrument(tier=t, region="cn-west-1", day=tomorrow).pk for t in ("standard", "frontier")
    ]
    buyers = [factories.AccountFactory(is_buyer=True, is_provider=False) for _ in range(5)]
    providers = [factories.AccountFactory(is_buyer=False, is_provider=True) for _ in range(3)]
    for b in buyers:
        factories.fund(b, Decimal("100000.00"))
    due_ids = []
    for tier in ("economy", "batch"):
        inst = factories.open_instrument(tier=tier, region="cn-west-1", day=timezone.now().date() + dt.timedelta(days=1))
        for i, b in enumerate(buyers):  # trades, then resting buys of every buyer: closes release many
            factories.place(providers[i % 3], inst, "sell", 2, "1.50")
            factories.place(b, inst, "buy", 2, "1.50")
            factories.place(b, inst, "buy", 1, "1.00")
        instrument_match(instrument_id=inst.pk)
        end = timezone.now() - dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS + 1)
        Instrument.objects.filter(pk=inst.pk).update(delivery_start=end - dt.timedelta(days=1), delivery_end=end)
        due_ids.append(inst.pk)
    assert Trade.objects.filter(instrument_id__in=due_ids).count() >= 10
    accounts = [a.pk for a in buyers + providers]

    procs = [_spawn(seed, accounts, open_ids, due_ids) for seed in range(PROCESSES)]
    reports = [_reap(p) for p in procs]

    errors = [e for r in reports for e in r["errors"]]
    assert errors == [], "\n".join(errors)
    done = sum(n for r in reports for k, n in r["outcomes"].items() if k.endswith(":ok"))
    assert done >= PROCESSES * OPERATIONS // 2, reports
    assert_invariants()
