"""Every registered model's changelist and change page render for staff, with a query count
that does not grow with the rows listed (list_select_related), and the settlement report's
query count stays constant as contracts grow."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from marketplace.models import Account
from tests import factories
from tests.admin.builders import M, settled_contract, usage

pytestmark = pytest.mark.django_db
MODELS = sorted(f"{m._meta.app_label}.{m._meta.model_name}" for m in admin.site._registry)


def _changelist(model: str) -> str:
    app, name = model.split(".")
    return reverse(f"admin:{app}_{name}_changelist")


@pytest.fixture
def market(worked_example, buyer):
    factories.api_key(buyer)
    live = factories.open_instrument(tier="economy", region="eu-central-1")
    factories.place(buyer, live, "buy", 2, "0.50")
    return worked_example


@pytest.mark.parametrize("model", MODELS)
def test_changelist_and_change_page_render_for_staff(staff_client, market, model):
    resp = staff_client.get(_changelist(model))
    assert resp.status_code == 200, model

    model_cls = next(m for m in admin.site._registry if f"{m._meta.app_label}.{m._meta.model_name}" == model)
    obj = model_cls._default_manager.first()
    if obj is not None:
        app, name = model.split(".")
        page = staff_client.get(reverse(f"admin:{app}_{name}_change", args=[obj.pk]))
        assert page.status_code == 200, model


def test_admin_home_links_the_report(staff_client):
    resp = staff_client.get(reverse("admin:index"))
    assert resp.status_code == 200
    assert reverse("admin:metering_settlement_report") in resp.content.decode()
    settlements = staff_client.get(reverse("admin:metering_settlement_changelist"))
    assert reverse("admin:metering_settlement_report") in settlements.content.decode()


def test_search_and_filters_work(staff_client, market):
    we = market
    cases = [
        ("metering.settlement", {"q": "p2"}, 2),
        ("marketplace.trade", {"settled": "yes"}, 4),
        ("marketplace.trade", {"instrument__tier__id__exact": we.i2.tier_id}, 1),
        ("metering.usageevent", {"q": "b2"}, 7),  # 7M in 2 events, 20.5M in 5
        ("marketplace.account", {"is_provider__exact": "1"}, 2),
        ("metering.ledgeraccount", {"owner__id__exact": we.b1.pk}, 3),
        ("marketplace.apikey", {"state": "active"}, 1),
    ]
    for model, params, count in cases:
        resp = staff_client.get(_changelist(model), params)
        assert resp.status_code == 200, model
        assert resp.context["cl"].result_count == count, (model, params)


def _more_contracts(we, n: int) -> None:
    for i in range(n):
        buyer = factories.AccountFactory()
        settled_contract(
            instrument=we.i1 if i % 2 else we.i3,
            buyer=buyer,
            seller=we.p1 if i % 3 else we.p2,
            quantity=2 * M,
            price="2.00",
            delivered=M,
            # standard tier, unused share 0.25: (1M + 0.25 x 1M) x 2.00 = 2.50; the buyer's fee
            # (its only contract) rounds to 0.00; the sells pay no fee, so the providers' running
            # totals stay those of the worked example.
            value="2.50",
            buyer_fee="0.00",
            seller_fee="0.00",
            escrow="4.01",
            seller_fee_bps=0,
        )
        usage(instrument=we.i1 if i % 2 else we.i3, provider=we.p1 if i % 3 else we.p2, buyer=buyer, billable=M)


def _queries(client, url: str, params: dict) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url, params).status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("group_by", ["day", "provider", "buyer", "tier", "region"])
def test_report_query_count_is_constant_as_contracts_grow(
    staff_client, worked_example, group_by, django_assert_max_num_queries
):
    url = reverse("admin:metering_settlement_report")
    params = {"date_from": worked_example.d1, "date_to": worked_example.d2, "group_by": group_by}
    small = _queries(staff_client, url, params)

    _more_contracts(worked_example, 40)

    with django_assert_max_num_queries(small):
        resp = staff_client.get(url, params)
    assert resp.context["report"].totals.contracts == 44
    assert small <= 20
    # The exports too.
    for fmt in ("csv", "xlsx"):
        small_export = _queries(staff_client, url, {**params, "export": fmt})
        assert small_export <= 8


@pytest.mark.parametrize(
    "model",
    [
        "metering.settlement",
        "marketplace.trade",
        "metering.usageevent",
        "metering.ledgerentry",
        "marketplace.order",
        "marketplace.account",
        "metering.ledgeraccount",
        "marketplace.instrument",
        "marketplace.apikey",
    ],
)
def test_changelist_query_count_does_not_grow_with_rows(staff_client, worked_example, model):
    small = _queries(staff_client, _changelist(model), {})
    _more_contracts(worked_example, 15)
    for acct in Account.objects.all()[:5]:
        factories.api_key(acct)
    assert _queries(staff_client, _changelist(model), {}) == small, model
