"""The API docs page gets the policy Swagger UI needs; JSON answers keep the strict one."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def _policy(response) -> dict[str, str]:
    out = {}
    for part in response["Content-Security-Policy"].split(";"):
        name, _, value = part.strip().partition(" ")
        out[name] = value
    return out


def test_docs_page_may_run_its_own_scripts_but_no_inline_script(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    policy = _policy(page)
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline': the init script is a file
    assert policy["connect-src"] == "'self'"  # it fetches /api/schema/
    assert policy["frame-ancestors"] == "'none'"
    assert "<script>" not in page.content.decode()  # every script of the page has a src
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"/api/schema/" in script.content


def test_json_answers_keep_default_src_none(client):
    for path in ("/api/v1/tiers", "/api/schema/", "/api/v1/nope"):
        assert _policy(client.get(path))["default-src"] == "'none'", path


@pytest.mark.parametrize("debug", [True, False])
@pytest.mark.parametrize("path", ["/api/v1/orders/abc", "/api/nope", "/api/v1/"])
def test_unknown_api_paths_answer_json_in_every_setting(client, settings, debug, path):
    settings.DEBUG = debug
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
    assert path in response.json()["error"]["message"]


def test_schema_marks_public_operations_open_and_private_ones_keyed(client):
    schema = client.get("/api/schema/?format=json").json()
    paths = schema["paths"]
    for path in ("/api/v1/tiers", "/api/v1/instruments", "/api/v1/instruments/{symbol}/book"):
        assert "security" not in paths[path]["get"], path
    assert paths["/api/v1/orders"]["post"]["security"] == [{"apiKey": []}]
    assert paths["/api/v1/balances"]["get"]["security"] == [{"apiKey": []}]
