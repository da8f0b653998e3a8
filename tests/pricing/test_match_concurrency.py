"""Matching with real Celery worker processes on PostgreSQL and Redis."""

from __future__ import annotations

import pytest

from marketplace.models import Order, Trade
from tests import factories
from tests.invariants import assert_invariants
from tests.workers import wait_until_matched

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.workers]


def test_real_workers_match_orders_placed_through_services(celery_workers):
    from decimal import Decimal

    factories.seed_catalog()
    inst = factories.open_instrument()
    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, Decimal("10000.00"))
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    workers = celery_workers(3)
    factories.place(provider, inst, "sell", 5, "1.20")
    factories.place(buyer, inst, "buy", 3, "1.30")
    wait_until_matched(timeout=60, workers=workers)
    t = Trade.objects.get()
    assert (t.quantity, t.price) == (3 * inst.lot_size, Decimal("1.20"))
    assert not Order.objects.filter(pending_match=True).exists()
    assert_invariants()
