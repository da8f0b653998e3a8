"""Browser tests of the pages a newcomer meets in the first hour (Playwright + Debian Chromium,
the harness of tests/web/test_browser.py; under CI=true they fail, never skip, without it).

A comma price refused beside its field; a deposit requested, approved by staff in admin and
then visible; an auction book's phase, countdown and indicative price; the markets board and
its forward curve drawn; the instrument, orders, contracts and balances pages at 390 px with
nothing pushed off to the side; Revoke inside its panel at desktop widths; sign-up showing
every error; a password reset followed from its e-mail.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from marketplace import display, services
from marketplace.models import Account, Order
from marketplace.web import queries
from metering.models import FundingRequest
from metering.selectors import balances_get
from pricing.services import auction_open, instrument_match
from tests import factories
from tests.web import test_browser as harness
from tests.web.conftest import logged_in, member

pytestmark = [pytest.mark.browser, pytest.mark.slow]
chromium, site = harness.chromium, harness.site  # the harness fixtures, used here by name

NEW_PASSWORD = "browser-reset-pass-2027"

# Visible elements of the page's main content that stick out of the viewport on either side:
# on a phone that is content hidden behind sideways scrolling (also inside a scrolling box).
# Stacked tables keep their header row for screen readers, clipped to a pixel: not counted.
OFF_SCREEN_JS = """() => {
  const out = [];
  for (const el of document.querySelectorAll('main *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || getComputedStyle(el).visibility === 'hidden') continue;
    if (el.closest('.visually-hidden, table.stack > thead')) continue;  // clipped, for screen readers only
    if (r.right > window.innerWidth + 0.5 || r.left < -0.5)
      out.push(el.tagName + (el.id ? '#' + el.id : '') + '.' + el.className + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  return out.slice(0, 10);
}"""


def _fill_order(page, *, side: str, mtok: str, price: str) -> None:
    page.locator(f"#order-form input[name='side'][value='{side}']").check()
    page.get_by_label("Quantity (Mtok)").fill(mtok)
    page.get_by_label("Limit price per Mtok").fill(price)


def _sign_in(page, base: str, user) -> None:
    """The browser takes over a session signed in (password and second factor) by the test client."""
    client = logged_in(user)
    page.context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base}])


def _in_viewport(page, locator) -> None:
    box = locator.bounding_box()
    width = page.viewport_size["width"]
    assert box is not None and locator.is_visible(), locator
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (locator, box)


def test_a_comma_in_the_price_is_refused_beside_the_field(site):
    base = site.url
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    buyer = factories.AccountFactory(is_buyer=True)
    factories.fund(buyer, Decimal("1000.00"))
    page = site()
    _sign_in(page, base, member(buyer))
    page.goto(f"{base}{inst.get_absolute_url()}")
    _fill_order(page, side="buy", mtok="2", price="7,50")
    page.get_by_role("button", name="Place buy order").click()
    error = page.locator("#id_price_errors")
    error.wait_for()
    assert "point for decimals and no thousands separator" in error.inner_text()
    assert page.get_by_label("Limit price per Mtok").input_value() == "7,50"
    assert not Order.objects.exists()
    assert not page.js_errors


def test_deposit_request_approved_in_admin_shows_in_the_users_balances(site):
    base = site.url
    buyer = factories.AccountFactory(is_buyer=True, name="Fresh Buyer")
    user_page = site()
    _sign_in(user_page, base, member(buyer))
    user_page.goto(f"{base}/funding/")
    user_page.locator("#deposit-form input[name='deposit-amount']").fill("2500.00")
    user_page.locator("#deposit-form input[name='deposit-reference']").fill("WIRE-778")
    user_page.get_by_role("button", name="Request deposit").click()
    user_page.get_by_text(re.compile(r"Deposit of 2500.00 requested")).wait_for()
    request = FundingRequest.objects.get(account=buyer)
    assert request.status == "pending" and balances_get(account=buyer)["available"] == 0

    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "staff-pass-2026-x")
    admin_page = site()
    _sign_in(admin_page, base, staff)  # admin is django-otp's OTPAdminSite: a verified session
    admin_page.goto(f"{base}/admin/metering/fundingrequest/")
    admin_page.locator(f"input[name='_selected_action'][value='{request.pk}']").check()
    admin_page.locator("select[name='action']").select_option("approve")
    admin_page.get_by_role("button", name="Go").click()
    admin_page.get_by_text("Approved 1 request(s).").wait_for()
    request.refresh_from_db()
    assert request.status == "approved" and request.decided_by == staff

    user_page.goto(f"{base}/balances/")
    assert user_page.locator("#bal-available").inner_text() == "2,500.00"
    assert balances_get(account=buyer)["available"] == Decimal("2500.00")
    assert user_page.locator("#statement tr[data-balance='available']").count() == 1
    assert not user_page.js_errors and not admin_page.js_errors


def test_auction_book_shows_phase_countdown_and_indicative_price(site):
    base = site.url
    inst = factories.open_instrument(day=timezone.now().date() + dt.timedelta(days=2))
    auction_open(instrument=inst)
    buyer = factories.AccountFactory(is_buyer=True)
    seller = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, Decimal("1000.00"))
    factories.place(seller, inst, "sell", 5, "1.00")
    factories.place(buyer, inst, "buy", 3, "1.20")
    instrument_match(instrument_id=inst.pk)  # collecting: nothing trades before the gate
    panel = queries.auction_panel(instrument=inst, account=None)
    page = site()
    _sign_in(page, base, member(buyer))
    page.goto(f"{base}{inst.get_absolute_url()}")
    auction = page.locator("#auction-panel")
    assert "Day-ahead call auction: collecting orders" in auction.inner_text()
    countdown = auction.locator("[data-countdown-to]")
    page.wait_for_function(
        "/^\\d+h \\d\\dm \\d\\ds$/.test(document.querySelector('[data-countdown-to]').textContent.trim())"
    )
    first = countdown.inner_text()
    page.wait_for_function(f"document.querySelector('[data-countdown-to]').textContent.trim() !== {first!r}")
    assert page.locator("#auction-price").inner_text() == display.price_text(panel.price)
    assert page.locator("#auction-volume").inner_text().startswith("3")
    assert "3 Mtok" in page.locator("#auction-mine").inner_text()  # the buyer's own order stands in it
    assert not page.js_errors


def test_markets_board_and_forward_curve_are_drawn(site):
    base = site.url
    today = timezone.now().date()
    spot = factories.open_instrument(tier="standard", region="cn-west-1", day=today)
    factories.open_instrument(tier="standard", region="cn-west-1", day=today + dt.timedelta(days=3))
    buyer = factories.AccountFactory(is_buyer=True)
    seller = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, Decimal("1000.00"))
    for price in ("1.10", "1.25"):
        factories.place(seller, spot, "sell", 1, price)
        factories.place(buyer, spot, "buy", 1, price)
        instrument_match(instrument_id=spot.pk)
    page = site()
    page.goto(f"{base}/")
    cell = page.locator(f"#spot-board a[data-symbol='{spot.symbol}']")
    assert cell.locator(".board-last").inner_text() == "1.25"
    page.wait_for_function(
        "window.Chart && Chart.getChart('forward-curve-chart')"
        " && Chart.getChart('forward-curve-chart').data.datasets.some(d => d.data.some(v => v !== null))"
    )
    assert page.locator("#market-table tbody tr").count() >= 2
    assert not page.js_errors


def _trading_world():
    today = timezone.now().date()
    inst = factories.open_instrument(tier="standard", region="cn-west-1", day=today)
    trader = factories.AccountFactory(is_buyer=True, is_provider=True, name="Pocket Trader")
    seller = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(trader, Decimal("5000.00"))
    factories.place(seller, inst, "sell", 4, "1.20", hardware="h200")
    factories.place(trader, inst, "buy", 10, "1.25")  # takes the 4, rests 6 at 1.25
    factories.place(seller, inst, "sell", 7, "1.40", hardware="ascend-910c")
    factories.place(trader, inst, "buy", 5, "1.05")
    instrument_match(instrument_id=inst.pk)
    return inst, trader


def test_trading_pages_on_a_phone_hide_nothing_sideways(site):
    base = site.url
    inst, trader = _trading_world()
    page = site(width=390, height=844)
    _sign_in(page, base, member(trader))
    page.goto(f"{base}{inst.get_absolute_url()}")
    assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate("window.innerWidth")
    assert page.evaluate(OFF_SCREEN_JS) == []
    book = page.locator("#book")
    for text in ("1.25", "1.05", "1.40"):  # best bid, next bid, best ask
        _in_viewport(page, book.get_by_text(text, exact=True).first)
    _in_viewport(page, book.get_by_text("ascend-910c 7"))
    trade = page.locator("#trades tbody tr").first
    for label in ("Price", "Mtok", "Hardware", "Aggressor"):
        _in_viewport(page, trade.locator(f"td[data-label='{label}']"))
    live = Order.objects.filter(account=trader, price=Decimal("1.05")).get()
    row = page.locator(f"#my-orders #order-{live.pk}")
    for label in ("Price", "Status", "Filled"):
        _in_viewport(page, row.locator(f"td[data-label='{label}']"))
    _in_viewport(page, row.get_by_role("button", name=f"Cancel order {live.pk}"))
    assert row.locator("td[data-label='Status']").inner_text() == "Open"

    for path in ("/orders/", "/contracts/", "/balances/", "/funding/", "/provider/", "/api-keys/", "/"):
        page.goto(f"{base}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        assert page.evaluate(OFF_SCREEN_JS) == [], path
    page.goto(f"{base}/orders/")
    _in_viewport(page, page.get_by_role("button", name=f"Cancel order {live.pk}"))
    page.goto(f"{base}/contracts/")
    _in_viewport(page, page.locator("#open-contracts td[data-label='Price']").first)
    page.goto(f"{base}/balances/")
    _in_viewport(page, page.locator("#statement td[data-label='Amount']").first)
    assert not page.js_errors


@pytest.mark.parametrize("width", [1280, 1440, 1920])
def test_revoke_stays_inside_the_api_keys_panel(site, width):
    base = site.url
    account = factories.AccountFactory(is_buyer=True, is_provider=True)
    for name in ("trading bot in the Frankfurt colocation rack", "usage reporter", "read-only dashboard"):
        services.api_key_create(account=account, scopes=["read", "trade", "meter", "funding"], name=name)
    page = site(width=width, height=900)
    _sign_in(page, base, member(account))
    page.goto(f"{base}/api-keys/")
    panel = page.locator("section[aria-labelledby='keys-title']").bounding_box()
    buttons = page.get_by_role("button", name=re.compile(r"Revoke key"))
    assert buttons.count() == 3
    for i in range(3):
        box = buttons.nth(i).bounding_box()
        assert panel["x"] <= box["x"] and box["x"] + box["width"] <= panel["x"] + panel["width"], (width, box, panel)
    assert page.evaluate("document.querySelector('#api-keys').parentElement.scrollWidth") <= page.evaluate(
        "document.querySelector('#api-keys').parentElement.clientWidth"
    )


def test_signup_shows_every_field_error_at_once(site):
    base = site.url
    taken = factories.AccountFactory(name="Taken Co")
    member(taken, username="taken-user")
    page = site()
    page.goto(f"{base}/signup/")
    page.get_by_label("Organization name").fill("Taken Co")
    page.get_by_label("Username").fill("taken-user")
    page.get_by_label("E-mail (optional)").fill("not-an-address")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Password again").fill("different")
    page.get_by_role("button", name="Create account").click()
    for field in ("account_name", "username", "email", "password1", "password2"):
        page.locator(f"#id_{field}_errors").wait_for()
    assert "already exists" in page.locator("#id_account_name_errors").inner_text()
    assert "is taken" in page.locator("#id_username_errors").inner_text()
    assert page.get_by_label("Username").get_attribute("aria-describedby").endswith("id_username_errors")
    assert Account.objects.count() == 1
    assert not page.js_errors


def test_password_reset_from_the_emailed_link(site, mailoutbox):
    base = site.url
    account = factories.AccountFactory(is_buyer=True)
    user = member(account, username="forgetful")
    user.email = "forgetful@example.com"
    user.save()
    page = site()
    page.goto(f"{base}/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill("forgetful@example.com")
    page.get_by_role("button", name="Send the reset link").click()
    page.get_by_role("heading", name="Check your e-mail").wait_for()
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["forgetful@example.com"]
    link = re.search(r"https?://\S+/password-reset/\S+/\S+/", mailoutbox[0].body).group(0)
    page.goto(link)
    page.get_by_role("heading", name="Choose a new password").wait_for()
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password confirmation").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set the new password").click()
    page.get_by_role("heading", name="Password changed").wait_for()
    page.get_by_role("link", name="Log in").last.click()
    page.get_by_label("Username").fill("forgetful")
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.locator("main form button[type='submit']").click()
    page.wait_for_url(f"{base}/")
    assert "forgetful" in page.locator(".who").inner_text()
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert not page.js_errors
