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


def service_missing(reason: str):
    """Skip a test whose service is missing here; fail it under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
    pytest.skip(reason)


_missing = service_missing  # the old name, for this module's own use


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
    Resident books are per process: each test starts without any.
    """
    from pricing.matcher import resident_books_clear

    resident_books_clear()
    queued: list[int] = []
    if not request.node.get_closest_marker("workers"):
        monkeypatch.setattr("pricing.dispatch.enqueue_match", queued.append)
        # No matcher runs, so a cancel applies its own command at once instead of waiting.
        monkeypatch.setattr(settings, "ORDER_CANCEL_WAIT_MS", 0)
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


# --- Invariants after every database test -------------------------------------------------
# Self-contained: the hook, the fixture and their names belong to this block only.

_DB_FIXTURES = ("db", "transactional_db", "live_server", "django_db_reset_sequences", "django_db_serialized_rollback")
_TRANSACTIONAL_FIXTURES = ("transactional_db", "live_server", "django_db_reset_sequences")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item._invariants_call_passed = report.passed
    return report


def _uses_database(request) -> tuple[bool, bool]:
    """(uses the database, in a transactional test)."""
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    uses = marker is not None or bool(names & set(_DB_FIXTURES))
    transactional = bool(names & set(_TRANSACTIONAL_FIXTURES)) or bool(
        marker and (marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences"))
    )
    return uses, transactional


@pytest.fixture(autouse=True)
def _invariants_after_test(request):
    """Check PRODUCT.md §8's invariants on the final state of every test that used the database.

    The database fixture is set up before this one, so this runs before pytest-django rolls
    back or flushes. A test that breaks the state on purpose is marked `breaks_invariants`; for
    it the checker must fail (a marked test whose final state is sound fails here too).
    """
    uses, transactional = _uses_database(request)
    if not uses:
        yield
        return
    request.getfixturevalue("transactional_db" if transactional else "db")
    # Settings a test changes (fee rates) stay in force until the check has run.
    request.getfixturevalue("settings")
    yield
    if not getattr(request.node, "_invariants_call_passed", False):
        return  # the test failed, was skipped or never ran: its own report says why
    from tests.invariants import assert_invariants

    if request.node.get_closest_marker("breaks_invariants"):
        try:
            assert_invariants()
        except AssertionError:
            return
        pytest.fail("marked breaks_invariants, but its final state satisfies every invariant")
    assert_invariants()


# --- parallel runs (pytest-xdist, `make test`) -------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup` the tests that start real processes (Celery workers, gunicorn,
    Chromium) run one after another on one xdist worker while the others run the rest: two of
    them at once on a small machine would starve each other's subprocesses into timeouts."""
    grouped = []
    for item in items:
        if item.get_closest_marker("workers") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("processes"))
            grouped.append(item)
    if grouped and getattr(config.option, "loadgroup", False):  # set on xdist workers
        # The group is the longest unit of work: handed out first, it does not become the tail.
        ids = {id(item) for item in grouped}
        items[:] = grouped + [item for item in items if id(item) not in ids]
