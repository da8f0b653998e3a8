"""The provider page says how to report usage with a working example of the provider's own
contract, and shows what was reported per contract."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.urls import reverse

from marketplace.models import Trade
from marketplace.web.templatetags.web_tags import mtok
from pricing.services import instrument_match
from tests import factories
from tests.conftest import api_client_for
from tests.web.conftest import logged_in, member

pytestmark = pytest.mark.django_db


def test_the_pasted_example_is_accepted_and_the_delivery_shows_on_the_page(catalog, buyer, provider):
    from django.utils import timezone

    inst = factories.open_instrument(tier="standard", region="cn-west-1", day=timezone.now().date())  # spot: delivering
    factories.place(provider, inst, "sell", 5, "1.00")
    factories.place(buyer, inst, "buy", 5, "1.00")
    instrument_match(instrument_id=inst.pk)
    contract = Trade.objects.get()
    web = logged_in(member(provider))

    page = web.get(reverse("web:provider")).content.decode()
    assert "POST /api/v1/usage" in page and "<code>meter</code>" in page
    example = html.unescape(re.search(r'<pre class="copyable" id="usage-example"><code>(.*?)</code></pre>', page, re.S).group(1))
    body = json.loads(re.search(r"-d '(.*)'", example, re.S).group(1))
    assert body["events"][0]["contract"] == contract.pk and body["events"][0]["buyer"] == buyer.slug

    r = api_client_for(provider, ("meter",)).post("/api/v1/usage", body, format="json")
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.content
    page = web.get(reverse("web:provider")).content.decode()
    row = page.split(f'id="contract-{contract.pk}"')[1].split("</tr>")[0]
    billable = r.json()["results"][0]["billable_tokens"]
    assert billable > 0
    assert f'<td class="num" data-label="Reported Mtok">{mtok(billable)}</td>' in row  # this contract's reported Mtok


def test_without_contracts_the_page_explains_instead(catalog, provider):
    page = logged_in(member(provider)).get(reverse("web:provider")).content.decode()
    assert "Report usage" in page and "ready-to-paste example" in page


def test_a_forward_contract_example_says_when_reporting_starts(catalog, buyer, provider):
    inst = factories.open_instrument(tier="standard", region="cn-west-1")  # tomorrow
    factories.place(provider, inst, "sell", 1, "1.00")
    factories.place(buyer, inst, "buy", 1, "1.00")
    instrument_match(instrument_id=inst.pk)
    page = logged_in(member(provider)).get(reverse("web:provider")).content.decode()
    assert f"is delivered from {inst.delivery_start:%Y-%m-%d %H:%M} UTC" in page
