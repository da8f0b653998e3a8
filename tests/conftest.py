"""Shared fixtures. Under CI=true a test that needs PostgreSQL, Redis, workers or Chromium
fails instead of skipping when the service is missing."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tests import factories
from tests.workers import celery_workers  # noqa: F401 (fixture: real Celery worker processes)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _service_requirements(request):
    if request.node.get_closest_marker("postgres") and not settings.IS_POSTGRES:
        _missing("needs PostgreSQL: set DATABASE_URL=postgres://...")
    if request.node.get_closest_marker("redis") and not settings.REDIS_URL:
        _missing("needs Redis: set REDIS_URL=redis://...")


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Per-process caches and the shared cache start empty: a test that committed (transactional
    tests, live servers) must not leave catalog entries, keys or market snapshots to the next."""
    from django.core.cache import cache

    from marketplace.api.key_cache import key_cache_clear
    from marketplace.catalog_cache import catalog_cache_clear

    if settings.REDIS_URL:
        # Only these keys: the Redis database is also the Celery broker of tests with workers.
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for pattern in ("*market-snapshot:*", "*generation:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        client.close()
    else:
        cache.clear()
    key_cache_clear()
    catalog_cache_clear()


@pytest.fixture(autouse=True)
def _matching_queue(request, monkeypatch):
    """Record enqueued matching instead of sending it, except in tests with real workers.

    Unit tests call the matcher service themselves; tests marked `workers` use the broker.
    """
    queued: list[int] = []
    if not request.node.get_closest_marker("workers"):
        monkeypatch.setattr("pricing.tasks.enqueue_match", queued.append)
    return queued


@pytest.fixture
def catalog(db):
    return factories.seed_catalog()


@pytest.fixture
def instrument(catalog):
    return factories.open_instrument(tier="standard", region="cn-west-1")


@pytest.fixture
def buyer(db):
    acct = factories.AccountFactory(is_buyer=True, is_provider=False)
    factories.fund(acct, Decimal("100000.00"))
    return acct


@pytest.fixture
def other_buyer(db):
    acct = factories.AccountFactory(is_buyer=True, is_provider=False)
    factories.fund(acct, Decimal("100000.00"))
    return acct


@pytest.fixture
def provider(db):
    return factories.AccountFactory(is_buyer=False, is_provider=True)


def api_client_for(account, scopes=("read", "trade")) -> APIClient:
    client = APIClient()
    _, raw = factories.api_key(account, scopes)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def buyer_api(buyer):
    return api_client_for(buyer)


@pytest.fixture
def provider_api(provider):
    return api_client_for(provider, ("read", "trade", "meter"))
