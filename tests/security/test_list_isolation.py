"""Every private list endpoint, with two accounts' data in the database: each account sees
exactly its own rows, checked by ids against the database (not by a marker in the text).

The endpoints are enumerated from the URL resolver: a private GET without an object id in its
path is a list of the caller's data, and must be taught to EXPECTED here to pass.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.models import Trade
from marketplace.services import order_cancel
from metering.funding import funding_deposit_request
from metering.selectors import balances_get
from metering.usage import usage_ingest
from pricing.services import instrument_match
from tests import factories
from tests.conftest import api_client_for
from tests.metering.builders import spot_instrument
from tests.security.ownership import (
    NOT_LISTS,
    OWN_IDS,
    listed_ids,
    own_funding_requests,
    own_ledger_entries,
    own_orders,
    own_trades,
)
from tests.security.routes import api_operations, required_scope

pytestmark = pytest.mark.django_db


EXPECTED = OWN_IDS


@pytest.fixture
def two_accounts(catalog):
    """Alice and Bob each buy, sell, rest orders and report usage, against the same counterparty."""
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    spot = spot_instrument(tier="economy", region="cn-east-1")
    alice = factories.AccountFactory(is_buyer=True, is_provider=True)
    bob = factories.AccountFactory(is_buyer=True, is_provider=True)
    carol = factories.AccountFactory(is_buyer=True, is_provider=True)
    factories.fund(alice, Decimal("5000.00"))
    factories.fund(bob, Decimal("7000.00"))
    factories.fund(carol, Decimal("9000.00"))
    for me, price in ((alice, "1.00"), (bob, "1.10")):
        for instrument in (inst, spot):
            factories.place(carol, instrument, "sell", 2, price)
            factories.place(me, instrument, "buy", 2, price)
            factories.place(me, instrument, "sell", 1, "2.00")
            factories.place(carol, instrument, "buy", 1, "2.00")
            instrument_match(instrument_id=instrument.pk)
        factories.place(me, inst, "buy", 1, "0.50")  # resting
        factories.place(me, spot, "sell", 1, "3.00")  # resting
        cancelled = factories.place(me, inst, "buy", 1, "0.40")
        order_cancel(account=me, order_id=cancelled.pk)
    instrument_match(instrument_id=inst.pk)
    instrument_match(instrument_id=spot.pk)
    # Both sold to carol: each reports usage on its own contract.
    for me in (alice, bob):
        sold = Trade.objects.filter(seller=me, instrument=spot).first()
        report = usage_ingest(
            provider=me,
            events=[
                {
                    "event_id": f"iso-{me.pk}",
                    "buyer": carol.slug,
                    "contract": sold.pk,
                    "timestamp": timezone.now().isoformat().replace("+00:00", "Z"),
                    "usage": {"prompt_tokens": 1000, "completion_tokens": 10},
                }
            ],
        )
        assert report.count("accepted") == 1
    for me in (alice, bob):
        for amount in ("1.00", "2.00", "3.00"):
            funding_deposit_request(account=me, amount=Decimal(amount), reference=f"wire {me.slug}")
    for me in (alice, bob):
        # Each has rows of every kind, and neither's set is empty or equal to the other's.
        for ids in (own_orders(me), own_trades(me), own_ledger_entries(me), own_funding_requests(me)):
            assert len(ids) >= 3
    assert not own_trades(alice) & own_trades(bob)
    return alice, bob, carol


def private_list_routes() -> list[str]:
    names = []
    for route, method in api_operations():
        if method == "get" and not route.kwargs and required_scope(route, method) is not None:
            names.append(route.name)
    return sorted(names)


def path_of(name: str) -> str:
    for route, method in api_operations():
        if route.name == name and method == "get":
            return "/" + route.route
    raise AssertionError(name)


def ids_listed(client, path: str) -> list[int]:
    """Every id on every page (cursor pagination followed to the end)."""
    ids: list[int] = []
    url: str | None = path + "?limit=2"
    pages = 0
    while url:
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.content[:300])
        body = r.json()
        ids += listed_ids(body)
        url = body.get("next")
        pages += 1
        assert pages < 100
    return ids


def test_every_private_list_endpoint_is_checked_here():
    routes = set(private_list_routes())
    assert routes == set(EXPECTED) | NOT_LISTS, f"teach test_list_isolation about {routes - set(EXPECTED) - NOT_LISTS}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_account_lists_exactly_its_own_rows(two_accounts, name):
    alice, bob, carol = two_accounts
    path = path_of(name)
    seen = {}
    for me in (alice, bob, carol):
        client = api_client_for(me, ("read", "trade", "meter"))
        listed = ids_listed(client, path)
        assert len(listed) == len(set(listed)), f"{path} repeats rows across pages"
        assert set(listed) == EXPECTED[name](me), f"{path} for {me.slug}"
        seen[me.pk] = set(listed)
    assert not seen[alice.pk] & seen[bob.pk], f"{path}: alice and bob see a common row"


@pytest.mark.parametrize("name", ["api:orders", "api:trades", "metering:contracts"])
def test_filters_do_not_widen_a_list_to_other_accounts(two_accounts, name):
    alice, bob, _ = two_accounts
    inst = Trade.objects.filter(buyer=bob).first().instrument
    client = api_client_for(alice)
    r = client.get(path_of(name), {"instrument": inst.symbol, "limit": 1000})
    assert r.status_code == 200, r.content[:300]
    listed = {row["id"] for row in r.json()["results"]}
    assert listed <= EXPECTED[name](alice)


def test_balances_are_the_callers_own(two_accounts):
    alice, bob, carol = two_accounts
    for me in (alice, bob, carol):
        r = api_client_for(me).get(path_of("metering:balances"))
        assert r.status_code == 200
        body = r.json()
        assert body["account"] == me.slug
        (row,) = body["balances"]
        own = balances_get(account=me)
        assert {k: Decimal(row[k]) for k in ("available", "escrow", "owed")} == own
    assert balances_get(account=alice) != balances_get(account=bob)
