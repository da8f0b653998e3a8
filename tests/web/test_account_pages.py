"""Sign-up shows every field's problem at once; a forgotten password is reset by e-mail; the
account settings page changes the e-mail and the password."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse

from marketplace.models import Account
from tests.web.conftest import PASSWORD, logged_in, member

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "a-new-passphrase-for-2027"


def test_signup_shows_all_field_errors_at_once(buyer):
    taken_user = member(buyer, username="taken-name")
    r = Client().post(
        reverse("web:signup"),
        {
            "account_name": buyer.name,  # taken
            "role": "buyer",
            "username": taken_user.username,  # taken
            "email": "not-an-address",
            "password1": "short",  # too short, too common
            "password2": "different",
        },
    )
    assert r.status_code == 400
    errors = r.context["form"].errors
    assert set(errors) == {"account_name", "username", "email", "password1", "password2"}, errors
    assert "already exists" in errors["account_name"][0]
    assert "is taken" in errors["username"][0]
    assert "too short" in " ".join(errors["password1"])
    assert errors["password2"] == ["The two passwords differ."]
    page = r.content.decode()
    for field in ("account_name", "username", "email", "password1", "password2"):
        assert f'id="id_{field}_errors"' in page
    assert get_user_model().objects.count() == 1 and Account.objects.count() == 1


def test_signup_keeps_the_email_for_password_reset(catalog):
    r = Client().post(
        reverse("web:signup"),
        {"account_name": "Mail Co", "role": "buyer", "username": "mailer", "email": "ops@mail.example",
         "password1": PASSWORD, "password2": PASSWORD},
    )  # fmt: skip
    assert r.status_code == 302
    assert get_user_model().objects.get(username="mailer").email == "ops@mail.example"


def _reset_link(outbox) -> str:
    assert len(outbox) == 1
    return re.search(r"https?://[^/\s]+(/password-reset/[^/\s]+/[^/\s]+/)", outbox[0].body).group(1)


def test_password_reset_by_email_link(buyer):
    user = member(buyer, username="forgetful")
    user.email = "forgetful@example.com"
    user.save()
    c = Client()
    assert "Forgot your password?" in c.get(reverse("web:login")).content.decode()
    r = c.post(reverse("web:password_reset"), {"email": "forgetful@example.com"})
    assert r.status_code == 302 and r.url == reverse("web:password_reset_done")
    assert mail.outbox[0].subject == "Reset your Ciyuan Exchange password"
    assert mail.outbox[0].to == ["forgetful@example.com"]
    link = _reset_link(mail.outbox)

    form_page = c.get(link, follow=True)  # Django swaps the token into the session, then shows the form
    assert "Choose a new password" in form_page.content.decode()
    r = c.post(form_page.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert r.status_code == 302 and r.url == reverse("web:password_reset_complete")
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    # The link worked once.
    assert "This link no longer works" in c.get(link, follow=True).content.decode()


def test_password_reset_does_not_say_whether_an_address_is_known(catalog):
    r = Client().post(reverse("web:password_reset"), {"email": "nobody@example.com"})
    assert r.status_code == 302 and r.url == reverse("web:password_reset_done")
    assert mail.outbox == []


def test_account_settings_change_email_and_password(buyer):
    user = member(buyer)
    web = logged_in(user)
    page = web.get(reverse("web:account"))
    assert page.status_code == 200
    assert reverse("web:security") in page.content.decode()

    r = web.post(reverse("web:account"), {"form": "email", "email": "me@buyer.example"})
    assert r.status_code == 302
    user.refresh_from_db()
    assert user.email == "me@buyer.example"

    r = web.post(
        reverse("web:account"),
        {"form": "password", "old_password": "wrong", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert r.status_code == 400 and "old_password" in r.context["password_form"].errors
    r = web.post(
        reverse("web:account"),
        {"form": "password", "old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert r.status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert web.get(reverse("web:account")).status_code == 200  # still signed in here


def test_account_settings_need_a_login(catalog):
    r = Client().get(reverse("web:account"))
    assert r.status_code == 302 and reverse("web:login") in r.url
