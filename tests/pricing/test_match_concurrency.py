"""Matching with real concurrency: Celery worker processes on PostgreSQL and Redis.

The big scenario runs what production runs: a gunicorn server (3 processes) on 127.0.0.1
against the pytest test database, 3 Celery worker processes consuming from Redis, and 8 API
clients in parallel threads posting 2,000 orders (and some cancels) to a handful of
instruments. Afterwards every invariant holds and each instrument's trades equal a
single-process replay of its match sequence, cancels included (pricing.replay); each
instrument was matched by the worker routing picks for it, from a resident book.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
from collections import Counter
from decimal import Decimal

import pytest

from marketplace.models import Instrument, InstrumentBook, Order, Trade
from pricing.dispatch import match_owner
from pricing.replay import instrument_replay, instrument_trades
from tests import factories
from tests.invariants import assert_invariants
from tests.workers import WebServer, wait_until_matched

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.workers]

HARDWARE = ["h100", "h200", "b200"]


def test_real_workers_match_orders_placed_through_services(celery_workers):
    factories.seed_catalog()
    inst = factories.open_instrument()
    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, Decimal("10000.00"))
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    workers = celery_workers(3)
    sell = factories.place(provider, inst, "sell", 5, "1.20")
    buy = factories.place(buyer, inst, "buy", 3, "1.30")

    wait_until_matched(timeout=60, workers=workers)

    t = Trade.objects.get()
    assert (t.buy_order_id, t.sell_order_id, t.quantity, t.price) == (
        buy.pk,
        sell.pk,
        3 * inst.lot_size,
        Decimal("1.20"),
    )
    assert not Order.objects.filter(pending_match=True).exists()
    assert_invariants()


class Client(threading.Thread):
    """One API user: places its orders in order, now and then cancels one of its own."""

    def __init__(self, *, port: int, key: str, symbols: list[str], n_orders: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.key, self.symbols, self.n_orders = port, key, symbols, n_orders
        self.rng = random.Random(seed)
        self.placed: list[int] = []
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.errors: list[str] = []

    def request(self, conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None):
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")

    def order_body(self) -> dict:
        r = self.rng
        side = r.choice(["buy", "sell"])
        body = {
            "instrument": r.choice(self.symbols),
            "side": side,
            "quantity": r.randint(1, 5) * 1_000_000,
            "price": str(Decimal("1.00") + Decimal("0.01") * r.randint(0, 10)),
            "time_in_force": r.choices(["gtc", "ioc", "fok", "post_only"], weights=[60, 15, 10, 15])[0],
        }
        if side == "sell":
            body["hardware"] = r.choice(HARDWARE)
        else:
            body["allowed_hardware"] = r.sample(HARDWARE, r.choice([0, 0, 1, 2]))
        return body

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            for i in range(self.n_orders):
                status, data = self.request(conn, "POST", "/api/v1/orders", self.order_body())
                self.statuses[("place", status)] += 1
                if status == 201:
                    self.placed.append(data["id"])
                else:
                    self.errors.append(f"place -> {status}: {data}")
                if i % 10 == 9 and self.placed:
                    victim = self.rng.choice(self.placed)
                    status, data = self.request(conn, "POST", f"/api/v1/orders/{victim}/cancel")
                    self.statuses[("cancel", status)] += 1
                    if status not in (200, 409):
                        self.errors.append(f"cancel -> {status}: {data}")
        except Exception as exc:  # reported by the test, not swallowed
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


@pytest.mark.slow
def test_parallel_api_clients_and_three_workers_give_the_trades_of_a_single_process_replay(celery_workers):
    factories.seed_catalog()
    instruments = [
        factories.open_instrument(tier="standard", region="cn-west-1"),
        factories.open_instrument(tier="standard", region="us-east-1"),
        factories.open_instrument(tier="frontier", region="cn-west-1"),
    ]
    symbols = [i.symbol for i in instruments]
    keys = []
    for _ in range(8):
        # Buyers and providers at once, so self-trade prevention happens too.
        acct = factories.AccountFactory(is_buyer=True, is_provider=True)
        factories.fund(acct, Decimal("1000000.00"))
        keys.append(factories.api_key(acct, ("read", "trade"))[1])

    workers = celery_workers(3)
    with WebServer(processes=3, env={"THROTTLE_RATE_KEY": "1000000/min"}) as web:
        clients = [Client(port=web.port, key=key, symbols=symbols, n_orders=250, seed=i) for i, key in enumerate(keys)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=300)
        assert not any(c.is_alive() for c in clients), "an API client is stuck"
        errors = [e for c in clients for e in c.errors]
        assert errors == [], errors[:10]
        wait_until_matched(timeout=120, workers=workers)
        worker_logs = {w.name: w.log() for w in workers.workers}

    placed = sum(len(c.placed) for c in clients)
    assert placed == 2000 and Order.objects.count() == placed
    assert not Order.objects.filter(pending_match=True).exists()
    assert_invariants()
    for inst in instruments:
        # One match sequence per instrument, orders and cancels together, without a gap.
        numbers = []
        for seq, cseq in Order.objects.filter(instrument=inst).values_list("sequence", "cancel_sequence"):
            numbers.append(seq)
            if cseq is not None and cseq != seq:
                numbers.append(cseq)
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), "match sequence numbers have a gap"
        book = InstrumentBook.objects.get(pk=inst.pk)
        assert book.last_matched_sequence == len(numbers)
        recorded = instrument_trades(instrument_id=inst.pk)
        assert len(recorded) > 50, f"{inst} traded too little for the scenario to mean much"
        assert instrument_replay(instrument_id=inst.pk) == recorded, f"{inst}: trades differ from the replay"
        assert Instrument.objects.get(pk=inst.pk).status == Instrument.Status.OPEN
    cancelled = Order.objects.filter(status_reason="cancelled_by_user")
    assert cancelled.count() > 0
    assert cancelled.filter(cancel_sequence__isnull=True).count() == 0
    # Routing: each instrument's matching ran mostly on the worker the rendezvous hash picks
    # for it (the sweep-like kicks of wait_until_matched go to the shared queue), and that
    # worker's resident book was reused far more often than it was loaded.
    names = sorted(worker_logs)
    tasks: dict[int, Counter[str]] = {inst.pk: Counter() for inst in instruments}
    loads: Counter[int] = Counter()
    for name, log in worker_logs.items():
        for inst_id, n_loads in re.findall(r"match_instrument\[[^\]]+\] succeeded.*'instrument': (\d+).*'loads': (\d+)", log):
            tasks[int(inst_id)][name] += 1
            loads[int(inst_id)] += int(n_loads)
    for inst in instruments:
        ran = tasks[inst.pk]
        assert ran, f"no match task logged for {inst}"
        assert ran.most_common(1)[0][0] == match_owner(instrument_id=inst.pk, workers=names), (inst.pk, ran)
        assert loads[inst.pk] * 3 < sum(ran.values()), (inst.pk, loads[inst.pk], sum(ran.values()))
