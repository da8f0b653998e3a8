"""Sign-in protection (issue 12 item 9): lockout of repeated failed logins (web and admin) and
TOTP two-factor offered to every user, required for staff (admin) and API-key creation."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from marketplace.models import ApiKey
from tests import factories
from tests.web.conftest import PASSWORD, logged_in, member

pytestmark = pytest.mark.django_db


def code(device: TOTPDevice, *, ahead: int = 0) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time += ahead * device.step
    return f"{totp.token():0{device.digits}d}"


@pytest.fixture
def owner(catalog):
    account = factories.AccountFactory(is_buyer=True)
    return member(account, "alice")


@override_settings(AXES_FAILURE_LIMIT=3)
def test_repeated_failed_web_logins_lock_the_user_out_even_with_the_right_password(owner):
    client = Client(REMOTE_ADDR="10.1.1.1")
    for _ in range(3):
        bad = client.post(reverse("web:login"), {"username": "alice", "password": "wrong"})
        assert bad.status_code in (200, 429)
    locked = client.post(reverse("web:login"), {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429 and "_auth_user_id" not in client.session
    # Another address is not locked out by these failures (the lockout is per user and address).
    other = Client(REMOTE_ADDR="10.1.1.2")
    assert other.post(reverse("web:login"), {"username": "alice", "password": PASSWORD}).status_code == 302


@override_settings(AXES_FAILURE_LIMIT=3)
def test_repeated_failed_admin_logins_lock_out_too(db):
    get_user_model().objects.create_superuser("ops", password=PASSWORD)
    client = Client(REMOTE_ADDR="10.1.1.3")
    for _ in range(3):
        client.post("/admin/login/", {"username": "ops", "password": "wrong", "otp_token": "000000"})
    locked = client.post("/admin/login/", {"username": "ops", "password": PASSWORD, "otp_token": "000000"})
    assert locked.status_code == 429


@override_settings(AXES_FAILURE_LIMIT=3)
def test_x_forwarded_for_does_not_dodge_the_lockout(owner):
    client = Client(REMOTE_ADDR="10.1.1.4")
    for i in range(3):
        client.post(reverse("web:login"), {"username": "alice", "password": "wrong"}, HTTP_X_FORWARDED_FOR=f"9.9.9.{i}")
    locked = client.post(
        reverse("web:login"), {"username": "alice", "password": PASSWORD}, HTTP_X_FORWARDED_FOR="9.9.9.200"
    )
    assert locked.status_code == 429


def test_a_user_enrols_an_authenticator_and_then_login_asks_for_a_code(owner):
    client = logged_in(owner, two_factor=False)
    page = client.get(reverse("web:security"))
    assert page.status_code == 200
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.content.decode()).group(1)
    device = TOTPDevice.objects.get(user=owner, confirmed=False)
    assert len(secret) >= 32 and "<svg" in page.content.decode()
    wrong = client.post(reverse("web:security"), {"token": "12345x"})
    assert wrong.status_code == 400 and not TOTPDevice.objects.filter(user=owner, confirmed=True).exists()
    ok = client.post(reverse("web:security"), {"token": code(device)})
    assert ok.status_code == 302
    device.refresh_from_db()
    assert device.confirmed

    fresh = Client()
    step1 = fresh.post(reverse("web:login"), {"username": "alice", "password": PASSWORD, "next": "/orders/"})
    assert step1.status_code == 302 and step1["Location"].startswith(reverse("web:login_verify"))
    # Password alone opens no account page.
    blocked = fresh.get(reverse("web:orders"))
    assert blocked.status_code == 302 and blocked["Location"].startswith(reverse("web:login_verify"))
    assert fresh.post(reverse("web:login_verify"), {"token": "000000", "next": "/orders/"}).status_code == 400
    # django-otp backs off after a wrong code (1 s, doubling); the test does not wait it out.
    TOTPDevice.objects.filter(pk=device.pk).update(throttling_failure_count=0, throttling_failure_timestamp=None)
    step2 = fresh.post(reverse("web:login_verify"), {"token": code(device, ahead=1), "next": "/orders/"})
    assert step2.status_code == 302 and step2["Location"] == "/orders/"
    assert fresh.get(reverse("web:orders")).status_code == 200


def test_api_key_creation_requires_a_verified_second_factor(owner):
    without = logged_in(owner, two_factor=False)
    refused = without.post(reverse("web:api_keys"), {"name": "bot", "scopes": ["read"]})
    assert refused.status_code == 403 and "two-factor" in refused.content.decode()
    assert not ApiKey.objects.exists()
    with_code = logged_in(owner)
    assert with_code.post(reverse("web:api_keys"), {"name": "bot", "scopes": ["read"]}).status_code == 200
    assert ApiKey.objects.count() == 1


def test_staff_need_a_verified_second_factor_for_admin(db):
    staff = get_user_model().objects.create_superuser("ops", password=PASSWORD)
    password_only = Client()
    password_only.force_login(staff)
    assert password_only.get("/admin/").status_code == 302
    # The admin login form itself asks for the code: the password alone does not sign in.
    form = Client().post("/admin/login/?next=/admin/", {"username": "ops", "password": PASSWORD})
    assert form.status_code == 200 and "_auth_user_id" not in form.client.session
    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    signed = Client()
    ok = signed.post(
        "/admin/login/?next=/admin/",
        {"username": "ops", "password": PASSWORD, "otp_device": device.persistent_id, "otp_token": code(device)},
    )
    assert ok.status_code == 302, ok.content.decode()[:2000]
    assert signed.get("/admin/").status_code == 200
