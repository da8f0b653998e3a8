"""Screenshots of every page for the README: `make screenshots` (writes docs/screenshots/*.png).

Starts the exchange as `make run` does (runexchange: gunicorn, a Celery worker, beat) on a
fresh SQLite database in a temporary directory, seeded by `seed_demo`, plus a little trading
through the real services so the book, trades, charts, contracts and statements have something
to show. Then Debian's Chromium (Playwright) signs in as the demo users and captures each page
at 1400 px, and the instrument page at 390 px (a phone). Stops runexchange by its PID.

    python docs/screenshots/capture.py [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(BASE_DIR))

from tests.smoke.embedded_trade import (  # noqa: E402 (after the path is set)
    READY_TIMEOUT,
    Api,
    SmokeFailure,
    embedded_env,
    free_port,
    listens_on_port,
    manage,
    quiet,
    stop,
    wait_for,
)

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
DEMO_PASSWORD = "ciyuan-demo-2026"
MAX_HEIGHT = 1800  # px: a screenshot shows the top of a long page

# Trading through the services, as a market would: a few crossing orders on today's
# standard/cn-west-1 book (several prices, so the chart has a range), usage reported by the
# provider on one contract, a deposit request waiting for staff, an auction collecting orders,
# and a session of the demo admin verified by an authenticator (admin needs two-factor sign-in).
PREPARE = """
import datetime as dt
from decimal import Decimal
from django.contrib.auth import get_user_model
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from marketplace import services
from marketplace.models import Account, Instrument
from metering import funding, usage
from pricing.services import auction_open, instrument_match

buyer = Account.objects.get(slug="agentic-labs")
other = Account.objects.get(slug="lotus-apps")
seller = Account.objects.get(slug="xiling-compute")
today = timezone.now().date()
inst = Instrument.objects.get(tier__code="standard", region__code="cn-west-1", delivery_date=today)
from django.db.models import Max, Min
from marketplace.models import LIVE_STATUSES, Order
live = Order.objects.filter(instrument=inst, status__in=LIVE_STATUSES)
bid = live.filter(side="buy").aggregate(p=Max("price"))["p"]
ask = live.filter(side="sell").aggregate(p=Min("price"))["p"]
# Inside the seeded spread: a buy rests at the price, then a sell takes it there.
steps = [3, 5, 2, 6, 4, 7, 5, 3]
for i, k in enumerate(steps):
    price = bid + inst.tick_size * k
    lots = 3 + (i * 5) % 7
    services.order_place(account=buyer if i % 2 == 0 else other, instrument=inst, side="buy",
                         quantity=lots * inst.lot_size, price=price)
    services.order_place(account=seller, instrument=inst, side="sell", quantity=lots * inst.lot_size,
                         price=price, hardware=["h100", "h200"][i % 2])
    instrument_match(instrument_id=inst.pk)
from marketplace.models import Trade
t = Trade.objects.filter(instrument=inst, buyer=buyer).order_by("pk").first()
if t is not None:
    report = usage.usage_ingest(provider=seller, events=[{
        "event_id": "demo-0001", "buyer": buyer.slug, "contract": t.pk,
        "timestamp": timezone.now().isoformat(),
        "usage": {"prompt_tokens": 1800000, "completion_tokens": 400000},
    }])
# Two days ahead: its day-ahead call auction is still collecting orders, whatever the hour.
ahead = Instrument.objects.get(tier__code="frontier", region__code="cn-east-1", delivery_date=today + dt.timedelta(days=2))
auction_open(instrument=ahead)
for price, lots in [("7.40", 10), ("7.55", 6), ("7.70", 8)]:
    services.order_place(account=seller, instrument=ahead, side="sell", quantity=lots * ahead.lot_size,
                         price=Decimal(price), hardware="h200")
for account, price, lots in [(buyer, "7.60", 12), (other, "7.45", 5), (buyer, "7.30", 4)]:
    services.order_place(account=account, instrument=ahead, side="buy", quantity=lots * ahead.lot_size, price=Decimal(price))
instrument_match(instrument_id=ahead.pk)
funding.funding_deposit_request(account=other, amount=Decimal("25000.00"), reference="BANK-REF-20311")
admin = get_user_model().objects.get(username="admin")
device, _ = TOTPDevice.objects.get_or_create(user=admin, name="demo", defaults={"confirmed": True})
# A session signed in with password and second factor, as admin's login leaves it.
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django_otp import DEVICE_ID_SESSION_KEY
session = SessionStore()
session.update({SESSION_KEY: str(admin.pk), BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
                 HASH_SESSION_KEY: admin.get_session_auth_hash(), DEVICE_ID_SESSION_KEY: device.persistent_id})
session.create()
print("ADMIN_SESSION", session.session_key)
print("prepared", Trade.objects.filter(instrument=inst).count(), "trades")
"""


def login(page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("input[name='username']", username)
    page.fill("input[name='password']", DEMO_PASSWORD)
    page.locator("main form [type='submit']").first.click()
    page.wait_for_load_state("networkidle")


def shoot(
    page, out: Path, name: str, url: str, *, full_page: bool = True, wait: str | None = None, max_height: int = MAX_HEIGHT
) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    if wait:
        page.wait_for_selector(wait)
    page.wait_for_timeout(600)  # charts draw after DOMContentLoaded
    if full_page:  # the whole page, but no taller than MAX_HEIGHT (long statements, long lists)
        height = min(page.evaluate("document.documentElement.scrollHeight"), max_height)
        width = page.viewport_size["width"]
        page.screenshot(path=str(out / f"{name}.png"), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})
    else:
        page.screenshot(path=str(out / f"{name}.png"))
    print(f"  {name}.png  {url}")


def capture(base: str, out: Path, admin_session: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )

        def context(width: int = 1400, height: int = 900):
            ctx = browser.new_context(viewport={"width": width, "height": height})
            ctx.set_default_timeout(30_000)
            return ctx, ctx.new_page()

        today = dt.datetime.now(dt.UTC).date()
        spot = f"/markets/standard:cn-west-1:{today.isoformat()}/"
        auction = f"/markets/frontier:cn-east-1:{(today + dt.timedelta(days=2)).isoformat()}/"

        ctx, page = context()
        shoot(page, out, "signup", f"{base}/signup/")
        shoot(page, out, "login", f"{base}/login/")
        shoot(page, out, "password-reset", f"{base}/password-reset/")
        shoot(page, out, "api-docs", f"{base}/api/docs/", full_page=False, wait=".opblock")
        login(page, base, "agentic-labs")
        shoot(page, out, "markets", f"{base}/", full_page=False)  # the board and curve; the full list is long
        shoot(page, out, "instrument", f"{base}{spot}", wait="#price-chart canvas")
        shoot(page, out, "auction", f"{base}{auction}", wait="#auction-panel")
        shoot(page, out, "orders", f"{base}/orders/")
        shoot(page, out, "contracts", f"{base}/contracts/")
        shoot(page, out, "balances", f"{base}/balances/")
        shoot(page, out, "funding", f"{base}/funding/")
        shoot(page, out, "api-keys", f"{base}/api-keys/")
        shoot(page, out, "security", f"{base}/account/security/")
        shoot(page, out, "account", f"{base}/account/")
        ctx.close()

        ctx, page = context(390, 844)
        login(page, base, "agentic-labs")
        shoot(page, out, "instrument-phone", f"{base}{spot}", wait="#price-chart canvas", max_height=4500)
        shoot(page, out, "orders-phone", f"{base}/orders/", full_page=False)  # the demo has many open orders
        ctx.close()

        ctx, page = context()
        login(page, base, "xiling-compute")
        shoot(page, out, "provider", f"{base}/provider/")
        ctx.close()

        ctx, page = context()
        ctx.add_cookies([{"name": "sessionid", "value": admin_session, "url": base}])
        shoot(page, out, "admin-funding-queue", f"{base}/admin/metering/fundingrequest/")
        shoot(page, out, "admin-settlement-report", f"{base}/admin/metering/settlement/report/?group_by=day", wait="#reconciliation")
        ctx.close()
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(BASE_DIR / "docs" / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ciyuan-screens-"))
    env = embedded_env(tmp)
    env["SANDBOX_FUNDING"] = "true"
    log_path = tmp / "runexchange.log"
    proc = None
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "seed_demo", "--key-file", str(tmp / "demo-api-keys.txt"))
        prepared = manage(env, "shell", "-c", PREPARE)
        admin_session = prepared.split("ADMIN_SESSION ")[1].split()[0]
        print(prepared.split("ADMIN_SESSION")[0].strip())
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "runexchange", "--addr", f"127.0.0.1:{port}"],
                cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        api = Api(base)
        wait_for(
            quiet(lambda: listens_on_port(proc.pid, port) and api.call("GET", "/api/v1/tiers")[0] == 200),
            timeout=READY_TIMEOUT, what=f"the exchange on {base}", proc=proc,
        )  # fmt: skip
        started = time.monotonic()
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        capture(base, out, admin_session)
        print(f"screenshots: {out} in {time.monotonic() - started:.0f}s")
        return 0
    except (SmokeFailure, subprocess.TimeoutExpired, Exception) as exc:
        print(f"screenshots: FAILED: {exc}", file=sys.stderr)
        if log_path.exists():
            print(log_path.read_text(errors="replace")[-6000:], file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
