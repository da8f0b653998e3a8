"""A database error that means "unreachable" (connection refused or lost, failover) is a 503
with Retry-After on every page, in the error shape under /api/. The real dropped connection is
tested in test_faults.py on PostgreSQL; these cover the mapping on any database."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import Client

from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db


def unreachable(*args, **kwargs):
    raise OperationalError("server closed the connection unexpectedly")


def test_an_api_call_gets_503_in_the_error_shape(buyer, monkeypatch):
    monkeypatch.setattr("marketplace.selectors.orders_for_account", unreachable)
    r = api_client_for(buyer).get("/api/v1/orders")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"
    assert set(r.json()["error"]) == {"code", "message", "fields"}
    assert int(r["Retry-After"]) > 0


def test_a_web_page_gets_503_not_a_500(catalog, monkeypatch):
    monkeypatch.setattr("marketplace.web.views.queries.market_overview", unreachable)
    r = Client(raise_request_exception=False).get("/")
    assert r.status_code == 503
    assert int(r["Retry-After"]) > 0
    assert b"could not reach its database" in r.content
