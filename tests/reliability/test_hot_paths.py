"""Query counts of the API's hot paths, pinned (bench/api.py measures their throughput).

A change that adds a query per order placed, per book read or per usage batch shows up here,
not as a slower benchmark weeks later."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db


def ctx_queries(fn) -> list[dict]:
    with CaptureQueriesContext(connection) as ctx:
        fn()
    return ctx.captured_queries


def count(fn) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = fn()
    assert response.status_code < 300, response.content[:300]
    return len(ctx.captured_queries)


# Outside a test transaction (as in production), so the per-process caches fill and the
# order's atomic() is a real transaction, not a savepoint of the test's.
@pytest.mark.django_db(transaction=True)
def test_placing_an_order_takes_a_fixed_number_of_queries(buyer, instrument):
    client = api_client_for(buyer)
    client.get("/api/v1/orders")  # the key's last_used_at is touched once a minute, not per request

    def place(price, **extra):
        body = {"instrument": instrument.symbol, "side": "buy", "quantity": 1_000_000, "price": price, **extra}
        return lambda: client.post("/api/v1/orders", body, format="json")

    count(place("0.99"))  # warm: the buyer's ledger account ids are remembered with the key's account
    first, second = count(place("1.00")), count(place("1.01", client_order_id="bot-7"))
    # The key, the instrument and the hardware catalog come from per-process caches, the
    # ledger account ids with the key's account: no query. With no instrument-wide lock and no
    # sequence number (the matcher assigns it), PostgreSQL gets ONE statement, in autocommit
    # (a single statement is atomic, so no BEGIN/COMMIT round trips):
    #   INSERT the order ... SELECT FROM the instrument WHERE open FOR KEY SHARE (its foreign-key
    #     lock, taken before the ledger rows: lock order; shared, so placements never wait for
    #     each other; a duplicate client_order_id is the unique index's refusal), and in the
    #     same statement the escrow: lock the buyer's two ledger rows in id order, update both
    #     balances, insert the ledger transaction and its two entries.
    # No re-read of the order for the response. SQLite runs a transaction: BEGIN, the order,
    # the ledger transaction, one UPDATE of both balances, the entries, COMMIT; and a
    # client_order_id is checked by a query (SQLite serializes writers, so it cannot race).
    # Pinned exactly, so one more (or one fewer, e.g. a check that went missing) shows up here.
    if connection.vendor == "postgresql":
        assert first == second == 1, "\n".join(q["sql"][:90] for q in ctx_queries(place("1.02")))
    else:
        assert (first, second) == (6, 7), "\n".join(q["sql"][:90] for q in ctx_queries(place("1.02")))


@pytest.mark.django_db(transaction=True)
def test_placing_an_order_with_an_idempotency_key_takes_a_fixed_number_of_queries(buyer, instrument):
    client = api_client_for(buyer)
    body = {"instrument": instrument.symbol, "side": "buy", "quantity": 1_000_000, "price": "1.00"}
    client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="warm")

    def place(key):
        return lambda: client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY=key)

    # BEGIN, the key's advisory lock, the order-and-escrow statement (no savepoint: idempotent()
    # rolls its whole transaction back on any refusal), the record INSERT ... ON CONFLICT DO
    # NOTHING (no look-up first: a repeat finds the record there), COMMIT. SQLite: no lock; the
    # order, ledger transaction, balances and entries are four statements, plus a SAVEPOINT pair
    # that SQLite's own atomic() takes for the idempotent block's nested order block.
    queries = count(place("k-1")), count(place("k-2"))
    expected = 5 if connection.vendor == "postgresql" else 7
    assert queries == (expected, expected), "\n".join(q["sql"][:90] for q in ctx_queries(place("k-3")))
    replay = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"


def test_reading_a_book_takes_as_many_queries_for_a_full_book_as_for_an_empty_one(instrument, buyer, provider):
    from rest_framework.test import APIClient

    from pricing.services import instrument_match
    from tests import factories

    client = APIClient()
    path = f"/api/v1/instruments/{instrument.symbol}/book"
    empty = count(lambda: client.get(path))
    for i in range(15):
        factories.place(buyer, instrument, "buy", 1, f"{0.50 + i / 100:.2f}")
        factories.place(provider, instrument, "sell", 1, f"{1.50 + i / 100:.2f}", hardware=("h100", "h200")[i % 2])
    instrument_match(instrument_id=instrument.pk)
    assert count(lambda: client.get(path)) == empty <= 4
