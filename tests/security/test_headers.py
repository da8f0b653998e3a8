"""Security headers on API answers, web pages and refusals alike."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db


def assert_common_headers(response) -> None:
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]


def test_public_api_answers_carry_the_security_headers(catalog):
    r = Client().get("/api/v1/tiers")
    assert r.status_code == 200
    assert_common_headers(r)
    assert r["Content-Security-Policy"].startswith("default-src 'none'")


def test_private_api_answers_are_not_cacheable(buyer):
    r = api_client_for(buyer).get("/api/v1/orders")
    assert r.status_code == 200
    assert_common_headers(r)
    assert r["Cache-Control"] == "no-store"


def test_refusals_carry_the_security_headers_too(db):
    for r in (
        Client().get("/api/v1/orders"),  # 401
        Client().get("/api/v1/no-such-endpoint"),  # 404
        Client().post(
            "/api/v1/orders",
            data="x" * 10,
            content_type="application/json",
            CONTENT_LENGTH="999999999",
        ),
    ):
        assert r.status_code in (401, 404, 413), r.status_code
        assert_common_headers(r)


def test_web_pages_carry_the_security_headers(catalog):
    r = Client().get("/")
    assert r.status_code == 200
    assert_common_headers(r)
    assert "object-src 'none'" in r["Content-Security-Policy"]


def test_session_cookies_are_http_only(settings):
    assert settings.SESSION_COOKIE_HTTPONLY is True
