"""API throttling per key: 429 in the error shape with Retry-After, counted per key (not per
account or address), refusing without side effects; and a throttle whose cache (Redis) is
down lets requests through rather than failing them."""

from __future__ import annotations

import copy
import uuid

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from marketplace.models import Order
from tests.conftest import api_client_for
from tests.reliability.procs import free_port

pytestmark = pytest.mark.django_db


def tiny_rates(key_rate: str = "3/min", anon_rate: str = "2/min"):
    rf = copy.deepcopy(settings.REST_FRAMEWORK)
    rf["DEFAULT_THROTTLE_RATES"] = {"api_key": key_rate, "anonymous": anon_rate}
    # A private cache per use: counts from other tests (or processes) cannot leak in. A LocMem
    # cache is one store per LOCATION for the whole process, so the name must be new each time
    # (with a fixed name, an earlier test's anonymous requests from 127.0.0.1 counted here).
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"throttle-{uuid.uuid4()}"}}
    return override_settings(REST_FRAMEWORK=rf, CACHES=caches)


def assert_throttled(response) -> None:
    assert response.status_code == 429, response.status_code
    error = response.json()["error"]
    assert error["code"] == "throttled" and set(error) == {"code", "message", "fields"}
    assert 1 <= int(response["Retry-After"]) <= 60


def test_a_key_over_its_rate_gets_429_with_retry_after(buyer):
    with tiny_rates():
        client = api_client_for(buyer)
        assert [client.get("/api/v1/orders").status_code for _ in range(3)] == [200, 200, 200]
        assert_throttled(client.get("/api/v1/orders"))


def test_the_rate_is_counted_per_key(buyer):
    with tiny_rates():
        first, second = api_client_for(buyer), api_client_for(buyer)
        for _ in range(3):
            first.get("/api/v1/orders")
        assert_throttled(first.get("/api/v1/orders"))
        assert second.get("/api/v1/orders").status_code == 200  # same account, another key


def test_throttle_counts_do_not_carry_over_between_uses(catalog):
    # What an earlier test spent does not count against the next one.
    with tiny_rates():
        client = APIClient()
        client.get("/api/v1/tiers")
        client.get("/api/v1/tiers")
        assert_throttled(client.get("/api/v1/tiers"))
    with tiny_rates():
        assert APIClient().get("/api/v1/tiers").status_code == 200


def test_a_throttled_order_is_not_placed(buyer, instrument):
    body = {"instrument": instrument.symbol, "side": "buy", "quantity": 1_000_000, "price": "1.00"}
    with tiny_rates(key_rate="2/min"):
        client = api_client_for(buyer)
        assert client.post("/api/v1/orders", body, format="json").status_code == 201
        assert client.post("/api/v1/orders", body, format="json").status_code == 201
        assert_throttled(client.post("/api/v1/orders", body, format="json"))
    assert Order.objects.count() == 2


def test_anonymous_callers_are_throttled_by_address(catalog):
    with tiny_rates():
        client = APIClient()
        assert client.get("/api/v1/tiers").status_code == 200
        assert client.get("/api/v1/tiers").status_code == 200
        assert_throttled(client.get("/api/v1/tiers"))
        other_address = APIClient(REMOTE_ADDR="10.0.0.9")
        assert other_address.get("/api/v1/tiers").status_code == 200


def test_the_throttle_lets_requests_through_when_its_cache_is_down(buyer):
    rf = copy.deepcopy(settings.REST_FRAMEWORK)
    rf["DEFAULT_THROTTLE_RATES"] = {"api_key": "1/min", "anonymous": "1/min"}
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": nothing_listens}}
    with override_settings(REST_FRAMEWORK=rf, CACHES=caches):
        client = api_client_for(buyer)
        assert [client.get("/api/v1/orders").status_code for _ in range(3)] == [200, 200, 200]
