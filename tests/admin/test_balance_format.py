"""Admin shows balances to the cent, as the ledger holds them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from tests import factories

pytestmark = pytest.mark.django_db


def test_account_list_shows_balances_to_the_cent(staff_client, catalog):
    acct = factories.AccountFactory(is_buyer=True, slug="float-looking")
    factories.fund(acct, Decimal("495806.80"))
    page = staff_client.get(reverse("admin:marketplace_account_changelist"))
    row = next(r for r in page.context["cl"].result_list if r.pk == acct.pk)
    admin = page.context["cl"].model_admin
    assert admin.available(row) == Decimal("495806.80")
    assert str(admin.available(row)) == "495806.80"
    text = page.content.decode()
    assert "495806.80<" in text and "495806.800" not in text
