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


def test_the_session_cookie_a_login_sets_is_http_only_and_same_site():
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user("cookie-user", password="pw-cookie-123!")
    client = Client()
    r = client.post("/login/", {"username": "cookie-user", "password": "pw-cookie-123!"})
    assert r.status_code == 302, r.status_code
    # The Set-Cookie header of the response itself, not the setting that should produce it.
    cookie = r.cookies["sessionid"]
    assert cookie.value and cookie["httponly"] is True
    assert cookie["samesite"].lower() == "lax"
    assert "httponly" in cookie.OutputString().lower()
