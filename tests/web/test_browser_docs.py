"""The interactive API docs render in a real browser under the page's own CSP.

`/api/docs/` used to be a blank page: the strict JSON policy (`default-src 'none'`) blocked
Swagger UI's script and stylesheet. This test loads it in Chromium and waits for operations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from tests.web.test_browser import chromium  # noqa: F401 (fixture: Debian Chromium via Playwright)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = Path(settings.BASE_DIR) / "test-artifacts" / "api-docs.png"


def test_api_docs_render_swagger_ui_with_operations(chromium, live_server, transactional_db):  # noqa: F811
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    blocked: list[str] = []
    page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        response = page.goto(f"{live_server.url}/api/docs/")
        assert response.status == 200
        assert "script-src 'self'" in response.headers["content-security-policy"]
        # Swagger UI renders one block per operation once it has fetched /api/schema/.
        page.locator(".opblock-summary-path", has_text="/api/v1/orders").first.wait_for(timeout=20_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/api/v1/instruments" in [p.strip() for p in paths]
        assert len(paths) >= 20
        assert not blocked, blocked
        assert not errors, errors
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
    finally:
        ctx.close()
