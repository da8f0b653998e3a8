"""Fixtures of the web UI tests: users who belong to accounts, logged-in clients."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from marketplace.models import Account, Membership

PASSWORD = "correct-horse-battery-staple-42"


def member(account: Account, username: str | None = None):
    """A user who belongs to `account` (its owner)."""
    user = get_user_model().objects.create_user(username or f"user-of-{account.slug}", password=PASSWORD)
    Membership.objects.create(account=account, user=user, role=Membership.Role.OWNER)
    return user


def otp_verified(client: Client, user) -> Client:
    """Give `user` a confirmed authenticator and mark the client's session verified by it, as
    a login with password and code does (django-otp keeps the device id in the session)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(
        user=user, name="test authenticator", confirmed=True
    )
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def logged_in(user, *, two_factor: bool = True) -> Client:
    """A client signed in as `user`; by default with a verified second factor (set
    two_factor=False for a user who never set one up)."""
    client = Client()
    client.force_login(user)
    return otp_verified(client, user) if two_factor else client


@pytest.fixture
def buyer_web(buyer) -> Client:
    return logged_in(member(buyer))


@pytest.fixture
def other_web(other_buyer) -> Client:
    return logged_in(member(other_buyer))


@pytest.fixture
def provider_web(provider) -> Client:
    return logged_in(member(provider))
