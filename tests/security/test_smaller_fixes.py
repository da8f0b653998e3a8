"""Issue 12 item 8: concurrent idempotent retries, CJK and concurrent sign-ups, the proxy
setting of the anonymous throttle, and owner-only actions."""

from __future__ import annotations

import copy
import threading
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.test import Client, override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace import services
from marketplace.api.idempotency import idempotency_lock_id
from marketplace.models import Account, ApiKey, Membership, Order
from metering.models import LedgerEntry
from tests import factories
from tests.web.conftest import PASSWORD, logged_in, member

from .test_throttling import assert_throttled


def _threads(n: int, target) -> list:
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_concurrent_retry_with_the_same_key_waits_and_gets_the_replay(catalog):
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, Decimal("1000.00"))
    _, raw = factories.api_key(buyer, ("read", "trade"))
    body = {"instrument": inst.symbol, "side": "buy", "quantity": 2_000_000, "price": "1.50"}
    key = "retry-1"

    def post(_i: int):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY=key)

    # Hold the key's lock so that both requests are in flight at once, then let them go.
    with connection.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [idempotency_lock_id(account_id=buyer.pk, key=key)])
        threads, results = _threads(4, post)
        # Wait until all four requests are queued on the lock: they are concurrent for certain.
        waiting = 0
        while waiting < 4 and all(t.is_alive() for t in threads):
            cur.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            waiting = cur.fetchone()[0]
        cur.execute("COMMIT")
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [201, 201, 201, 201], [r.content for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    assert sum(r.get("Idempotent-Replayed") == "true" for r in results) == 3
    assert Order.objects.filter(account=buyer).count() == 1


@pytest.mark.django_db
def test_an_organization_named_in_chinese_signs_up(catalog):
    client = Client()
    data = {"account_name": "次元科技", "role": "both", "username": "ciyuan", "password1": PASSWORD, "password2": PASSWORD}
    response = client.post(reverse("web:signup"), data)
    assert response.status_code == 302, response.content.decode()
    account = Account.objects.get(name="次元科技")
    assert account.slug.startswith("org-") and account.slug.isascii()
    second = services.account_create(name="次元资本", is_buyer=True)
    assert second.slug != account.slug
    again = client.post(reverse("web:signup"), dict(data, username="other"))
    assert again.status_code == 400 and Account.objects.filter(name="次元科技").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_sign_ups_with_one_name_give_one_account_and_clean_4xx(catalog):
    barrier = threading.Barrier(4)

    def signup(i: int):
        barrier.wait()
        data = {"account_name": "Same Name Ltd", "role": "buyer", "username": f"u{i % 2}", "password1": PASSWORD,
                "password2": PASSWORD}
        return Client().post(reverse("web:signup"), data).status_code

    threads, results = _threads(4, signup)
    for t in threads:
        t.join()
    assert sorted(results).count(302) == 1 and all(s in (302, 400) for s in results), results
    assert Account.objects.filter(name="Same Name Ltd").count() == 1
    assert get_user_model().objects.count() == 1


@pytest.mark.django_db
def test_the_anonymous_throttle_ignores_x_forwarded_for_by_default(catalog):
    rf = copy.deepcopy(settings.REST_FRAMEWORK)
    rf["DEFAULT_THROTTLE_RATES"] = {"api_key": "3/min", "anonymous": "2/min"}
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "xff-test"}}
    with override_settings(REST_FRAMEWORK=rf, CACHES=caches):
        client = APIClient(REMOTE_ADDR="10.0.0.1")
        for i in range(2):
            assert client.get("/api/v1/tiers", HTTP_X_FORWARDED_FOR=f"1.2.3.{i}").status_code == 200
        assert_throttled(client.get("/api/v1/tiers", HTTP_X_FORWARDED_FOR="1.2.3.99"))
    rf["NUM_PROXIES"] = 1  # behind one proxy: the address it appended is the client's
    with override_settings(REST_FRAMEWORK=rf, CACHES=dict(caches, default=dict(caches["default"], LOCATION="xff-2"))):
        proxy = APIClient(REMOTE_ADDR="10.0.0.1")
        for i in range(2):
            assert proxy.get("/api/v1/tiers", HTTP_X_FORWARDED_FOR=f"spoof, 1.2.3.{i}").status_code == 200
        assert proxy.get("/api/v1/tiers", HTTP_X_FORWARDED_FOR="spoof, 1.2.3.0").status_code == 200
        assert_throttled(proxy.get("/api/v1/tiers", HTTP_X_FORWARDED_FOR="other, 1.2.3.0"))


@pytest.mark.django_db
def test_only_an_owner_creates_or_revokes_api_keys_and_a_member_still_trades(catalog):
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    account = factories.AccountFactory(is_buyer=True)
    factories.fund(account, Decimal("1000.00"))
    owner = member(account, "the-owner")
    plain = get_user_model().objects.create_user("a-member", password=PASSWORD)
    Membership.objects.create(account=account, user=plain, role=Membership.Role.MEMBER)
    as_member = logged_in(plain)
    refused = as_member.post(reverse("web:api_keys"), {"name": "bot", "scopes": ["read"]})
    assert refused.status_code == 403 and "Only an owner" in refused.content.decode()
    assert not ApiKey.objects.filter(account=account).exists()
    key, _ = services.api_key_create(account=account, scopes=["read"], created_by=owner)
    as_member.post(reverse("web:api_key_revoke", args=[key.pk]))
    key.refresh_from_db()
    assert key.revoked_at is None
    placed = as_member.post(
        reverse("web:order_place", args=[inst.symbol]),
        {"side": "buy", "quantity_mtok": "1", "price": "1.00", "time_in_force": "gtc"},
    )
    assert placed.status_code == 302 and Order.objects.filter(account=account).count() == 1
    assert as_member.get(reverse("web:balances")).status_code == 200
    as_owner = logged_in(owner)
    before = LedgerEntry.objects.count()
    assert as_owner.post(reverse("web:api_key_revoke", args=[key.pk])).status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None and LedgerEntry.objects.count() == before
