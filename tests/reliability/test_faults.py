"""Faults, for real on PostgreSQL and Redis: the broker stopped while clients keep posting
orders, a worker SIGKILLed in the middle of a matching batch, the database connection
dropped under a request, and the same matching task delivered twice at once.

Each test owns what it starts (redis-server, gunicorn, Celery workers), stops it by PID,
bounds every wait, and ends with the invariants and a replay of the book through the pure
engine (pricing.replay), which proves that nothing was lost or matched twice.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from decimal import Decimal

import psutil
import pytest
import requests
from django.db import close_old_connections, connection

from marketplace.models import (
    IdempotencyRecord,
    Instrument,
    InstrumentBook,
    Order,
    Trade,
)
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction
from pricing.replay import instrument_replay, instrument_trades
from tests import factories
from tests.invariants import assert_invariants
from tests.reliability.procs import (
    RedisServer,
    WebServer,
    backend_alive,
    backends_waiting_on_locks,
    broker_idle,
    broker_unacked,
    row_locks,
    run_manage_python,
    terminate_backend,
    wait_for,
)
from tests.workers import CeleryWorkers, wait_until_matched

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.workers,
    pytest.mark.slow,
]

LOT = 1_000_000


@pytest.fixture
def market(transactional_db):
    """An open instrument, a funded buyer and a provider, with API keys (raw secrets)."""
    factories.seed_catalog()
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    buyer = factories.AccountFactory(is_buyer=True, is_provider=False)
    factories.fund(buyer, Decimal("100000.00"))
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    _, buyer_key = factories.api_key(buyer, ("read", "trade"))
    _, provider_key = factories.api_key(provider, ("read", "trade"))
    return {
        "instrument": inst,
        "buyer": buyer,
        "provider": provider,
        "buyer_key": buyer_key,
        "provider_key": provider_key,
    }


def post_order(base_url: str, key: str, body: dict, *, idempotency_key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return requests.post(f"{base_url}/api/v1/orders", json=body, headers=headers, timeout=60)


def order_body(inst: Instrument, side: str, lots: int, price: str) -> dict:
    body = {
        "instrument": inst.symbol,
        "side": side,
        "quantity": lots * LOT,
        "price": price,
    }
    if side == "sell":
        body["hardware"] = "h100"
    return body


def pending_count() -> int:
    return Order.objects.filter(pending_match=True).count()


def wait_matched_without_kicks(*, timeout: float, workers: CeleryWorkers | None = None) -> None:
    """Wait (bounded) for the queued tasks alone to drain the book: no re-enqueueing."""
    wait_until_matched(timeout=timeout, workers=workers, kick_every=10 * timeout)


def assert_exactly_once(inst: Instrument) -> None:
    close_old_connections()
    assert pending_count() == 0
    assert instrument_trades(instrument_id=inst.pk) == instrument_replay(instrument_id=inst.pk)
    assert_invariants()


def ledger_snapshot() -> tuple:
    return (
        sorted(LedgerAccount.objects.values_list("id", "balance")),
        LedgerEntry.objects.count(),
        LedgerTransaction.objects.count(),
    )


# --- 1. the broker stops while clients keep posting ---------------------------------------


def test_orders_are_accepted_while_redis_is_down_and_all_matched_once_it_returns(
    market,
):
    inst, buyer_key, provider_key = (
        market["instrument"],
        market["buyer_key"],
        market["provider_key"],
    )
    with RedisServer() as redis_server:
        env = {"REDIS_URL": redis_server.url}
        with CeleryWorkers(1, env=env) as workers, WebServer(env=env) as web:
            # Healthy first: a crossing pair trades through the broker.
            assert post_order(web.url, provider_key, order_body(inst, "sell", 1, "1.00")).status_code == 201
            assert post_order(web.url, buyer_key, order_body(inst, "buy", 1, "1.00")).status_code == 201
            wait_matched_without_kicks(timeout=60, workers=workers)
            assert Trade.objects.count() == 1

            redis_server.stop()
            accepted = []
            for i in range(6):
                for side, key, price in (
                    ("sell", provider_key, "1.10"),
                    ("buy", buyer_key, "1.20"),
                ):
                    r = post_order(
                        web.url,
                        key,
                        order_body(inst, side, 2, price),
                        idempotency_key=f"outage-{side}-{i}",
                    )
                    assert r.status_code == 201, (
                        r.status_code,
                        r.text,
                        web.log()[-3000:],
                    )
                    accepted.append(r.json()["id"])
            # The server logged each lost enqueue instead of failing the request.
            assert "left for the sweep" in web.log()
            # Reads keep working too (market data comes from PostgreSQL).
            book = requests.get(f"{web.url}/api/v1/instruments/{inst.symbol}/book", timeout=30)
            assert book.status_code == 200
            # Recorded and waiting: nothing could be queued, nothing was matched.
            assert sorted(Order.objects.filter(pending_match=True).values_list("id", flat=True)) == sorted(accepted)
            assert Trade.objects.count() == 1

            redis_server.start()  # empty: whatever was queued before the outage is gone too
            # The periodic sweep (run here once, as beat would) queues every instrument with
            # pending orders; the worker has reconnected on its own.
            out = run_manage_python("from pricing.tasks import sweep; print(sweep())", env=env)
            assert "'enqueued': 1" in out, out
            wait_matched_without_kicks(timeout=90, workers=workers)
            # And a second sweep, as beat runs it every few seconds: nothing left to do.
            again = run_manage_python("from pricing.tasks import sweep; print(sweep())", env=env)
            assert "'enqueued': 0" in again, again

    # Each 2-lot buy at 1.20 met a 2-lot sell at 1.10 resting before it: six more trades.
    trades = Trade.objects.order_by("match_sequence")
    assert trades.count() == 7
    assert all(o.filled_quantity == o.quantity for o in Order.objects.all())
    assert sorted(t.quantity for t in trades[1:]) == [2 * LOT] * 6
    assert all(t.price == Decimal("1.10") for t in trades[1:])
    assert_exactly_once(inst)


# --- 2. a worker SIGKILLed in the middle of a matching batch -------------------------------


def _buyer_ledger_ids(buyer) -> list[int]:
    return list(
        LedgerAccount.objects.filter(owner=buyer, kind__in=["available", "escrow"]).values_list("id", flat=True)
    )


@pytest.mark.parametrize("victim", ["pool_process", "whole_worker"])
def test_a_worker_killed_mid_batch_leaves_nothing_half_written_and_the_batch_completes_once(market, victim):
    """The batch is held in the middle (trades and order updates written, the escrow release
    waiting on a ledger row the test locks), then the worker is SIGKILLed.

    - pool_process: the prefork child dies; acks_late + reject_on_worker_lost put the message
      back and the same worker runs it again, with no sweep.
    - whole_worker: the machine is gone; its unacknowledged message would come back only after
      the visibility timeout, so a new worker and the periodic sweep finish the job.
    """
    inst, buyer, provider = market["instrument"], market["buyer"], market["provider"]
    # A sell resting at 1.00 and a buy at 3.00 crossing it: the buy's escrow (reserved at 3.00)
    # is partly released in the batch, so the batch must lock the buyer's ledger rows.
    sells = [factories.place(provider, inst, "sell", 1, "1.00") for _ in range(3)]
    buys = [factories.place(buyer, inst, "buy", 1, "3.00") for _ in range(3)]
    before = ledger_snapshot()
    workers = CeleryWorkers(1, pool="prefork", concurrency=1)
    replacement: CeleryWorkers | None = None
    try:
        with row_locks("metering_ledgeraccount", _buyer_ledger_ids(buyer)):
            workers.start()  # purges what placement queued; the test queues the one task
            from pricing.tasks import match_instrument

            match_instrument.delay(inst.pk)
            blocked = wait_for(
                lambda: backends_waiting_on_locks(),
                timeout=60,
                what="the batch to block",
            )
            assert len(blocked) == 1
            # Mid-batch: the worker has written trades and order updates, none visible.
            assert Trade.objects.count() == 0 and pending_count() == 6

            main = psutil.Process(workers.pids[0])
            if victim == "pool_process":
                children = main.children(recursive=True)
                assert len(children) == 1
                os.kill(children[0].pid, signal.SIGKILL)
            else:
                os.killpg(main.pid, signal.SIGKILL)
        # The lock is released: the killed session's statement finishes, its client is gone,
        # and PostgreSQL rolls the whole transaction back.
        wait_for(
            lambda: not backend_alive(blocked[0]),
            timeout=60,
            what="the killed worker's session to end",
        )
        if victim == "whole_worker":
            assert Trade.objects.count() == 0 and pending_count() == 6
            assert ledger_snapshot() == before
            replacement = CeleryWorkers(1)
            replacement.start()
            from pricing.tasks import sweep

            assert sweep()["enqueued"] == 1
            wait_matched_without_kicks(timeout=60, workers=replacement)
        else:
            wait_matched_without_kicks(timeout=60)
            log = workers.logs()
            assert "SIGKILL" in log or "WorkerLostError" in log, log[-3000:]
    finally:
        workers.stop()
        if replacement is not None:
            replacement.stop()

    assert Trade.objects.count() == 3
    for order in [*sells, *buys]:
        order.refresh_from_db()
        assert order.status == "filled" and order.filled_quantity == LOT
    assert LedgerTransaction.objects.filter(kind="match").count() == InstrumentBook.objects.get(pk=inst.pk).batches
    assert_exactly_once(inst)


# --- 3. the database connection drops under a request --------------------------------------


def test_a_dropped_database_connection_gives_503_writes_nothing_and_the_retry_is_safe(
    market,
):
    inst, buyer, buyer_key = market["instrument"], market["buyer"], market["buyer_key"]
    body = order_body(inst, "buy", 5, "2.00")
    idem = f"drop-{uuid.uuid4().hex}"
    before = ledger_snapshot()
    sequence_before = InstrumentBook.objects.get(pk=inst.pk).last_matched_sequence
    app_name = f"ciyuan-fault-web-{uuid.uuid4().hex[:6]}"
    with WebServer(env={"PGAPPNAME": app_name}, workers=1) as web:
        result: dict = {}

        def place() -> None:
            result["response"] = post_order(web.url, buyer_key, body, idempotency_key=idem)

        with row_locks("metering_ledgeraccount", _buyer_ledger_ids(buyer)):
            thread = threading.Thread(target=place)
            thread.start()
            # The request has inserted the order and now waits for the buyer's ledger rows to
            # reserve escrow: kill its connection there.
            backend = wait_for(
                lambda: backends_waiting_on_locks(application_name=app_name),
                timeout=60,
                what="the request to block",
            )[0]
            terminate_backend(backend)
            thread.join(timeout=60)
            assert not thread.is_alive()

        r = result["response"]
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.json()["error"]["code"] == "database_unavailable"
        assert set(r.json()["error"]) == {"code", "message", "fields"}
        assert int(r.headers["Retry-After"]) > 0
        # Nothing half-written: no order, no escrow, no sequence number used, no replay record.
        assert Order.objects.count() == 0
        assert IdempotencyRecord.objects.count() == 0
        assert ledger_snapshot() == before
        assert InstrumentBook.objects.get(pk=inst.pk).last_matched_sequence == sequence_before

        # The client retries with the same key: placed once; a second retry replays it.
        first = post_order(web.url, buyer_key, body, idempotency_key=idem)
        assert first.status_code == 201, first.text
        again = post_order(web.url, buyer_key, body, idempotency_key=idem)
        assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
        assert again.json()["id"] == first.json()["id"]

    assert Order.objects.count() == 1
    assert LedgerTransaction.objects.filter(kind="escrow_reserve").count() == 1
    assert_invariants()


# --- 4. the same matching task delivered twice (or late) ----------------------------------


def _crossing_book(market, *, pairs: int = 20) -> Instrument:
    inst, buyer, provider = market["instrument"], market["buyer"], market["provider"]
    for i in range(pairs):
        factories.place(provider, inst, "sell", 1 + i % 3, f"{1 + (i % 5) / 10:.2f}")
        factories.place(buyer, inst, "buy", 1 + (i * 7) % 4, f"{1 + (i % 4) / 10:.2f}")
    return inst


def _state(inst: Instrument) -> tuple:
    return (
        instrument_trades(instrument_id=inst.pk),
        sorted(Order.objects.values_list("id", "status", "filled_quantity", "pending_match")),
        ledger_snapshot(),
    )


def test_the_same_matching_task_run_twice_at_once_changes_nothing(market):
    """Two deliveries of one task race in two threads (two database sessions); the
    InstrumentBook row lock serializes them, and the second finds nothing pending."""
    from pricing.tasks import match_instrument

    inst = _crossing_book(market)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            barrier.wait(timeout=30)
            match_instrument.run(inst.pk)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert Trade.objects.exists()
    assert_exactly_once(inst)

    # A late (out-of-order) delivery after everything was matched: a no-op.
    state = _state(inst)
    match_instrument.run(inst.pk)
    assert _state(inst) == state


def test_duplicate_deliveries_to_real_workers_match_exactly_once(market, celery_workers):
    from pricing.tasks import match_instrument, sweep

    inst = _crossing_book(market, pairs=30)
    workers = celery_workers(3)
    for _ in range(4):
        match_instrument.delay(inst.pk)
    sweep.delay()
    wait_matched_without_kicks(timeout=90, workers=workers)
    state = _state(inst)
    # Stale duplicates arriving after the work is done change nothing either.
    baseline = broker_unacked()
    for _ in range(3):
        match_instrument.delay(inst.pk)
    wait_for(lambda: broker_idle(unacked_baseline=baseline), timeout=120, what="the stale deliveries to be consumed")
    assert _state(inst) == state
    assert_exactly_once(inst)
