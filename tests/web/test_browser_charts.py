"""The instrument page draws an OHLC candlestick chart with volume (vendored lightweight-charts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from pricing.services import instrument_match
from tests import factories
from tests.web.test_browser import chromium  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = Path(settings.BASE_DIR) / "test-artifacts" / "candles.png"


def test_instrument_page_draws_candles_from_trades(chromium, live_server, transactional_db):  # noqa: F811
    factories.seed_catalog()
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    buyer = factories.AccountFactory(is_buyer=True)
    seller = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, 10_000)
    for price in ("1.00", "1.20", "0.90", "1.10"):
        factories.place(seller, inst, "sell", 1, price)
        factories.place(buyer, inst, "buy", 1, price)
        instrument_match(instrument_id=inst.pk)
    ctx = chromium.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{live_server.url}{inst.get_absolute_url()}?interval=1m")
        page.wait_for_function("document.getElementById('price-chart').getAttribute('data-candles') > 0", timeout=20_000)
        # lightweight-charts draws on its own canvases inside the box.
        assert page.locator("#price-chart canvas").count() >= 1
        assert page.evaluate("typeof LightweightCharts") == "object"
        assert not errors, errors
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.locator("#price-chart").screenshot(path=str(SCREENSHOT))
    finally:
        ctx.close()
