"""Price protection in the browser: a price far from the last trade asks for confirmation
before anything is sent to the book; confirming places it once."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from marketplace.models import Account, Order
from metering.services import funds_deposit
from pricing.services import instrument_match
from tests import factories
from tests.invariants import assert_invariants
from tests.web.test_browser import PASSWORD, chromium, site  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = Path(settings.BASE_DIR) / "test-artifacts" / "price-band.png"


def _signup(page, base: str, *, org: str, username: str) -> None:
    page.goto(f"{base}/signup/")
    page.get_by_label("Organization name").fill(org)
    page.locator("input[name='role'][value='buyer']").check()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/(balances|provider)/$"))


def test_a_far_price_asks_for_confirmation_and_confirming_places_it(site):  # noqa: F811
    base = site.url
    instrument = factories.open_instrument(tier="standard", region="cn-west-1")
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    other = factories.AccountFactory(is_buyer=True)
    factories.fund(other, Decimal("100"))
    # The book trades at 2.00 (the matcher publishes the reference price after commit).
    factories.place(provider, instrument, "sell", 1, "2.00")
    factories.place(other, instrument, "buy", 1, "2.00")
    instrument_match(instrument_id=instrument.pk)

    page = site()
    _signup(page, base, org="Fat Finger Labs", username="fatfinger")
    buyer = Account.objects.get(slug="fat-finger-labs")
    funds_deposit(account=buyer, amount=Decimal("1000.00"), reason="staff deposit")
    page.goto(f"{base}{instrument.get_absolute_url()}")

    page.locator("#order-form input[name='side'][value='buy']").check()
    page.get_by_label("Quantity (Mtok)").fill("1")
    page.get_by_label("Limit price per Mtok").fill("20.00")  # meant 2.00
    page.locator("#order-form button[type='submit'].buy").click()
    confirm = page.locator("#band-confirm")
    confirm.wait_for()
    text = confirm.inner_text()
    assert "Far from the market" in text and "1.50 to 2.50" in text, text
    assert not Order.objects.filter(account=buyer).exists()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.locator("#order-entry").screenshot(path=str(SCREENSHOT))

    page.get_by_role("button", name=re.compile(r"Place at 20\.00 anyway")).click()
    page.get_by_text(re.compile(r"Order #\d+ placed")).wait_for()
    placed = Order.objects.get(account=buyer)
    assert placed.price == Decimal("20.00")
    assert page.locator("#band-confirm").count() == 0
    assert not page.js_errors, page.js_errors
    assert_invariants()
