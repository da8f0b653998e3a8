"""Browser tests: Playwright drives Debian's Chromium against a live server.

No Celery worker runs here: after each placement the test runs the matcher in-process
(pricing.services.instrument_match), as a worker would. The pages are never reloaded by
the test while it waits for a fill: htmx polling has to bring it.

Under CI=true these tests fail (never skip) when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from marketplace.models import Account, Order, OrderStatus, Trade
from metering.selectors import balances_get
from metering.services import funds_deposit
from pricing.services import instrument_match
from tests import factories
from tests.conftest import service_missing as _missing
from tests.invariants import assert_invariants

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Written on every run under test-artifacts/ (not tracked); docs/screenshots/instrument.png is a
# copy of one run, shown in the README.
SCREENSHOT = Path(settings.BASE_DIR) / "test-artifacts" / "instrument.png"
PASSWORD = "browser-test-pass-2026"
WAIT_MS = 20_000  # upper bound for a live update to appear (polling is every 2 s)


def _need(condition: bool, reason: str) -> None:
    if not condition:
        _missing(reason)  # fails instead of skipping under CI=true


@pytest.fixture(scope="module")
def chromium():
    _need(Path(CHROMIUM).exists() or bool(shutil.which("chromium")), f"Chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover
        _need(False, "playwright is not installed")
    # Playwright's sync API keeps an event loop running in this thread for the module's
    # lifetime; Django would refuse the test's own ORM calls (and the database flush between
    # tests) as "async unsafe" although they are plain synchronous calls.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    pw = sync_playwright().start()
    browser = pw.chromium.launch(
        executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )
    yield browser
    browser.close()
    pw.stop()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def site(chromium, live_server, transactional_db):
    factories.seed_catalog()
    contexts = []

    def new_page(width: int = 1400, height: int = 1000):
        ctx = chromium.new_context(viewport={"width": width, "height": height})
        ctx.set_default_timeout(WAIT_MS)
        contexts.append(ctx)
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors
        return page

    new_page.url = live_server.url
    yield new_page
    for ctx in contexts:
        ctx.close()


def _signup(page, base: str, *, org: str, username: str, role: str) -> None:
    page.goto(f"{base}/signup/")
    page.get_by_label("Organization name").fill(org)
    page.locator(f"input[name='role'][value='{role}']").check()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/(balances|provider)/$"))


def _fill_order(page, *, side: str, mtok: str, price: str, hardware: str | None = None) -> None:
    page.locator(f"#order-form input[name='side'][value='{side}']").check()
    page.get_by_label("Quantity (Mtok)").fill(mtok)
    page.get_by_label("Limit price per Mtok").fill(price)
    if hardware:
        page.get_by_label("Hardware (sell)").select_option(hardware)


def test_buyer_sees_fill_live_cancels_rest_and_statement_shows_escrow(site):
    base = site.url
    instrument = factories.open_instrument(tier="standard", region="cn-west-1")
    symbol_url = f"{base}{instrument.get_absolute_url()}"

    # A buyer signs up; with no funds the balances page says how to get a deposit.
    buyer_page = site()
    _signup(buyer_page, base, org="Lantern Agents", username="lantern", role="buyer")
    assert "request a deposit" in buyer_page.content()
    buyer = Account.objects.get(slug="lantern-agents")
    funds_deposit(account=buyer, amount=Decimal("1000.00"), reason="staff deposit")

    # The buyer places a buy of 10 Mtok at 2.00 from the instrument page (htmx form post).
    buyer_page.goto(symbol_url)
    _fill_order(buyer_page, side="buy", mtok="10", price="2.00")
    buyer_page.wait_for_function(
        "document.querySelector('#preview-reserve') && document.querySelector('#preview-reserve').textContent.includes('20.02')"
    )
    buyer_page.get_by_role("button", name="Place buy order").click()
    buyer_page.get_by_text(re.compile(r"Order #\d+ placed: buy 10 Mtok at 2")).wait_for()
    order = Order.objects.get(account=buyer)
    assert balances_get(account=buyer)["escrow"] == Decimal("20.02")  # 20.00 + 10 bps, rounded up once
    instrument_match(instrument_id=instrument.pk)  # what a worker does after the commit
    row = buyer_page.locator(f"#my-orders #order-{order.pk}")
    row.wait_for()
    buyer_page.evaluate("window.__stillTheSamePage = true")

    # A provider signs up and lists 4 Mtok at 1.95 on h100: it crosses the buy.
    provider_page = site()
    _signup(provider_page, base, org="Gobi Compute", username="gobi", role="provider")
    provider_page.goto(symbol_url)
    _fill_order(provider_page, side="sell", mtok="4", price="1.95", hardware="h100")
    provider_page.locator("#preview-floor").wait_for()
    provider_page.get_by_role("button", name="Place sell order").click()
    provider_page.get_by_text(re.compile(r"Order #\d+ placed: sell 4 Mtok")).wait_for()
    instrument_match(instrument_id=instrument.pk)
    trade = Trade.objects.get(buyer=buyer)
    assert (trade.quantity, trade.price) == (4_000_000, Decimal("2.00"))  # at the resting buy's price

    # The buyer's page shows the fill without a reload: htmx polling brings it.
    buyer_page.wait_for_function(
        f"document.querySelector('#order-{order.pk} .filled') && document.querySelector('#order-{order.pk} .filled').textContent.trim() === '4'"
    )
    assert "Partially Filled" in row.inner_text()
    buyer_page.locator("#trades").get_by_text("h100").wait_for()
    assert buyer_page.evaluate("window.__stillTheSamePage === true")
    assert "2.00" in buyer_page.locator("#last-price").inner_text()

    # More capacity listed above the bid (other hardware) reaches the open page's book too.
    provider = Account.objects.get(slug="gobi-compute")
    factories.place(provider, instrument, "sell", 5, "2.05", hardware="h200")
    factories.place(provider, instrument, "sell", 8, "2.12", hardware="b200")
    instrument_match(instrument_id=instrument.pk)
    buyer_page.locator("#book").get_by_text("b200 8").wait_for()
    assert buyer_page.evaluate("window.__stillTheSamePage === true")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    buyer_page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The buyer cancels the remaining 6 Mtok (confirming the dialog).
    buyer_page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Cancel order {order.pk}").click()
    buyer_page.get_by_text(f"Order #{order.pk} cancelled").wait_for()
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED and order.filled_quantity == 4_000_000

    # The statement shows the escrow reserved and its release.
    buyer_page.goto(f"{base}/balances/")
    statement = buyer_page.locator("#statement")
    assert statement.locator("tr[data-kind='escrow_reserve'][data-balance='escrow']").count() == 1
    assert statement.locator("tr[data-kind='escrow_release'][data-balance='escrow']").count() == 1
    released = statement.locator("tr[data-kind='escrow_release'][data-balance='escrow'] td").nth(3).inner_text()
    assert released == "-12.01"  # 20.02 reserved - ceil(4 Mtok x 2.00 x 1.001) = 20.02 - 8.01
    balances = balances_get(account=buyer)
    assert buyer_page.locator("#bal-escrow").inner_text() == f"{balances['escrow']:,}"
    assert balances["escrow"] == trade.buyer_escrow
    assert not buyer_page.js_errors and not provider_page.js_errors
    assert_invariants()


def test_order_form_shows_field_errors_for_lot_size_and_tick(site):
    base = site.url
    instrument = factories.open_instrument(tier="economy", region="cn-east-1")
    page = site()
    _signup(page, base, org="Tick Testers", username="ticker", role="both")
    funds_deposit(account=Account.objects.get(slug="tick-testers"), amount=Decimal("100.00"))
    page.goto(f"{base}{instrument.get_absolute_url()}")

    _fill_order(page, side="buy", mtok="1.5", price="0.50")
    page.get_by_role("button", name="Place buy order").click()
    quantity_error = page.locator("#id_quantity_mtok_errors")
    quantity_error.wait_for()
    assert quantity_error.inner_text() == "quantity must be a multiple of the lot size (1,000,000 tokens)."
    assert page.locator("#id_price_errors").count() == 0

    _fill_order(page, side="buy", mtok="2", price="0.505")
    page.get_by_role("button", name="Place buy order").click()
    price_error = page.locator("#id_price_errors")
    price_error.wait_for()
    assert price_error.inner_text() == "price must be a multiple of the tick size (0.01)."
    assert page.locator("#id_quantity_mtok_errors").count() == 0
    assert not Order.objects.exists()

    # The price chart's interval choice refreshes the chart data in place.
    page.get_by_label("Interval", exact=True).select_option("1m")
    page.wait_for_function("JSON.parse(document.getElementById('candles-data').textContent).interval === '1m'")

    # The field keeps the keyboard: errors are announced beside the inputs, which stay labelled.
    assert page.get_by_label("Limit price per Mtok").input_value() == "0.505"
    assert not page.js_errors


def test_pages_fit_a_phone_screen(site):
    base = site.url
    instrument = factories.open_instrument(tier="standard", region="cn-west-1")
    page = site(width=390, height=844)
    _signup(page, base, org="Pocket Trader", username="pocket", role="both")
    for path in (
        "/",
        instrument.get_absolute_url(),
        "/orders/",
        "/balances/",
        "/contracts/",
        "/provider/",
        "/api-keys/",
    ):
        page.goto(f"{base}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
    assert not page.js_errors
