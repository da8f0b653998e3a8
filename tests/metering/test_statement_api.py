"""GET /api/v1/contracts, /balances, /ledger: own data only, cursor pages, pinned queries."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metering.models import LedgerEntry
from metering.settlement import settlements_run_due
from metering.usage import usage_ingest
from tests import factories
from tests.conftest import api_client_for

from .builders import D, after_grace, contract, event, spot_instrument

pytestmark = pytest.mark.django_db

# Noon UTC of the day the test runs: every entry of a test is made on one UTC day, so the date
# filters below cannot straddle midnight (a deposit at 23:59:59.9 and a reserve at 00:00:00.1).
NOON = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    # Autouse fixtures are set up before the others, so the funding fixtures run on it too.
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOON)
    return NOON


@pytest.fixture
def fees(settings):
    settings.MAKER_FEE_BPS = 5
    settings.TAKER_FEE_BPS = 10


def test_contracts_show_delivery_so_far_oldest_first_then_the_settlement(catalog, buyer, provider, fees):
    inst = spot_instrument(tier="standard")
    older = contract(buyer, provider, inst, 2, "1.50")
    newer = contract(buyer, provider, inst, 3, "1.40")
    # 2.5 Mtok delivered: 2 to the older contract, 0.5 to the newer.
    usage_ingest(provider=provider, events=[event(buyer, inst, prompt=500_000) for _ in range(5)])
    for client, role in ((api_client_for(buyer, ("read",)), "buyer"), (api_client_for(provider, ("read",)), "provider")):
        r = client.get("/api/v1/contracts")
        assert r.status_code == 200
        rows = {c["id"]: c for c in r.json()["results"]}
        assert rows[older.pk]["delivered_tokens"] == 2_000_000 and rows[newer.pk]["delivered_tokens"] == 500_000
        assert rows[older.pk]["status"] == "delivering" and rows[older.pk]["settlement"] is None
        assert rows[older.pk]["role"] == role and rows[older.pk]["buyer"] == buyer.slug
        assert rows[older.pk]["provider"] == provider.slug and rows[older.pk]["price"] == "1.50"
        assert rows[older.pk]["instrument"] == inst.symbol
    settlements_run_due(now=after_grace(inst))
    r = api_client_for(buyer, ("read",)).get("/api/v1/contracts").json()
    rows = {c["id"]: c for c in r["results"]}
    assert rows[newer.pk]["status"] == "settled"
    # newer: (0.5 + 0.25 x 2.5) Mtok x 1.40 = 1.575 -> 1.58 (half-even at the cent)
    assert rows[newer.pk]["settlement"]["value"] == "1.58"
    assert rows[newer.pk]["settlement"]["delivered_tokens"] == 500_000
    assert rows[newer.pk]["delivered_tokens"] == 500_000


def test_contracts_are_private_and_paginated_with_a_cursor(catalog, buyer, other_buyer, provider):
    inst = spot_instrument()
    mine = [contract(buyer, provider, inst, 1, "1.00") for _ in range(3)]
    contract(other_buyer, provider, inst, 1, "1.00")
    client = api_client_for(buyer, ("read",))
    first = client.get("/api/v1/contracts?limit=2").json()
    assert [c["id"] for c in first["results"]] == [mine[2].pk, mine[1].pk]
    second = client.get(first["next"]).json()
    assert [c["id"] for c in second["results"]] == [mine[0].pk] and second["next"] is None
    assert len(api_client_for(provider, ("read",)).get("/api/v1/contracts?role=provider").json()["results"]) == 4
    assert client.get("/api/v1/contracts?role=provider").json()["results"] == []
    assert client.get("/api/v1/contracts?role=x").status_code == 400


def test_contract_list_query_count_does_not_grow_with_the_page(catalog, buyer, provider):
    inst = spot_instrument()
    client = api_client_for(buyer, ("read",))
    contract(buyer, provider, inst, 1, "1.00")
    client.get("/api/v1/contracts")

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get("/api/v1/contracts").status_code == 200
        return len(ctx.captured_queries)

    one = count()
    for _ in range(5):
        contract(buyer, provider, inst, 1, "1.00")
    assert count() == one


def test_balances_per_currency(catalog, buyer, buyer_api, instrument):
    factories.place(buyer, instrument, "buy", 10, "1.50")
    r = buyer_api.get("/api/v1/balances").json()
    assert r == {
        "account": buyer.slug,
        "balances": [{"currency": "CNY", "available": "99984.98", "escrow": "15.02", "owed": "0.00", "pending_withdrawal": "0.00"}],
    }


def test_ledger_lists_own_entries_with_running_balance_and_filters(catalog, buyer, other_buyer, instrument):
    factories.fund(buyer, D("5.00"))
    factories.place(buyer, instrument, "buy", 10, "1.50")
    client = api_client_for(buyer, ("read",))
    rows = client.get("/api/v1/ledger").json()["results"]
    # newest first: reserve (10 Mtok x 1.50 + 10 bps = 15.015 -> 15.02: escrow +15.02, available
    # -15.02), deposit 5.00, deposit 100,000.00
    assert [(x["kind"], x["account"], x["amount"], x["balance"]) for x in rows] == [
        ("escrow_reserve", "escrow", "15.02", "15.02"),
        ("escrow_reserve", "available", "-15.02", "99989.98"),
        ("deposit", "available", "5.00", "100005.00"),
        ("deposit", "available", "100000.00", "100000.00"),
    ]
    mine = set(LedgerEntry.objects.filter(account__owner=buyer).values_list("id", flat=True))
    assert {x["id"] for x in rows} == mine
    assert len(client.get("/api/v1/ledger?kind=deposit").json()["results"]) == 2
    assert len(client.get("/api/v1/ledger?account=escrow").json()["results"]) == 1
    assert len(client.get("/api/v1/ledger?since=2000-01-01&until=2000-01-02").json()["results"]) == 0
    today = NOON.date().isoformat()
    assert {x["created_at"][:10] for x in rows} == {today}
    assert len(client.get(f"/api/v1/ledger?since={today}&until={today}").json()["results"]) == 4
    yesterday, tomorrow = (NOON.date() - dt.timedelta(days=1)).isoformat(), (NOON.date() + dt.timedelta(days=1)).isoformat()
    assert client.get(f"/api/v1/ledger?since={yesterday}&until={yesterday}").json()["results"] == []
    assert client.get(f"/api/v1/ledger?since={tomorrow}").json()["results"] == []
    assert len(client.get(f"/api/v1/ledger?until={yesterday}").json()["results"]) == 0
    assert client.get("/api/v1/ledger?kind=bogus").status_code == 400
    assert client.get("/api/v1/ledger?since=soon").status_code == 400
    page = client.get("/api/v1/ledger?limit=3").json()
    assert len(page["results"]) == 3 and len(client.get(page["next"]).json()["results"]) == 1


def test_statement_endpoints_need_a_key_with_the_read_scope(buyer):
    from rest_framework.test import APIClient

    for path in ("/api/v1/balances", "/api/v1/ledger", "/api/v1/contracts"):
        assert APIClient().get(path).status_code == 401
        assert api_client_for(buyer, ("trade",)).get(path).status_code == 403
