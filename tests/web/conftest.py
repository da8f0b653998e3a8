"""Fixtures of the web UI tests: users who belong to accounts, logged-in clients."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from marketplace.models import Account, Membership

PASSWORD = "correct-horse-battery-staple-42"


def member(account: Account, username: str | None = None):
    """A user who belongs to `account` (its owner)."""
    user = get_user_model().objects.create_user(username or f"user-of-{account.slug}", password=PASSWORD)
    Membership.objects.create(account=account, user=user, role=Membership.Role.OWNER)
    return user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def buyer_web(buyer) -> Client:
    return logged_in(member(buyer))


@pytest.fixture
def other_web(other_buyer) -> Client:
    return logged_in(member(other_buyer))


@pytest.fixture
def provider_web(provider) -> Client:
    return logged_in(member(provider))
