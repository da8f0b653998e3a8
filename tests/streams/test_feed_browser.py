"""The instrument page on the live feed, in Chromium against a real uvicorn and Celery worker:
it goes live, a new resting order shows in its book without the page polling, and it falls
back to polling when the socket cannot open (the WSGI live server of tests/web has none)."""

from __future__ import annotations

import pytest

from tests import factories
from tests.reliability.procs import WebServer
from tests.web.test_browser import WAIT_MS, chromium  # noqa: F401 (fixture)
from tests.workers import wait_until_matched

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.workers]


def test_the_instrument_page_updates_from_the_feed_without_polling(chromium, transactional_db, celery_workers):  # noqa: F811
    factories.seed_catalog()
    inst = factories.open_instrument()
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    workers = celery_workers(1)
    with WebServer(asgi=True, workers=1) as web:
        page = chromium.new_page()
        book_requests = []
        page.on("request", lambda r: book_requests.append(r.url) if inst.get_absolute_url() in r.url else None)
        page.goto(f"{web.url}{inst.get_absolute_url()}")
        page.wait_for_selector("#live-poller[data-stream-state=live]", state="attached", timeout=WAIT_MS)
        loads = len(book_requests)

        factories.place(provider, inst, "sell", 3, "7.77")
        wait_until_matched(timeout=60, workers=workers)
        page.wait_for_selector(".area-book >> text=7.77", timeout=WAIT_MS)

        # One refresh per feed message at most, not one every 2 seconds: the page did not poll.
        assert page.get_attribute("#live-poller", "data-stream-state") == "live"
        assert 1 <= len(book_requests) - loads <= 3
        page.close()


def test_the_instrument_page_polls_when_the_feed_is_unavailable(chromium, live_server, transactional_db):  # noqa: F811
    factories.seed_catalog()
    inst = factories.open_instrument()
    page = chromium.new_page()
    page.goto(f"{live_server.url}{inst.get_absolute_url()}")
    # The WSGI live server refuses the upgrade: the page stays on its 2-second poll.
    page.wait_for_function(
        "() => document.querySelector('#live-poller').getAttribute('data-stream-state') === 'polling'",
        timeout=WAIT_MS,
    )
    with page.expect_request(lambda r: inst.get_absolute_url() in r.url, timeout=WAIT_MS):
        pass
    page.close()
