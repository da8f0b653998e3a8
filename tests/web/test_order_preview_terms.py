"""The order preview says what a buyer pays if nothing is delivered and what a seller nets."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from marketplace.models import Tier
from tests import factories
from tests.web.conftest import logged_in, member

pytestmark = pytest.mark.django_db


def _preview(web, inst, **q):
    return web.get(reverse("web:order_preview", args=[inst.symbol]), q).content.decode()


def test_buy_preview_states_the_unused_capacity_charge(instrument, buyer):
    web = logged_in(member(buyer))
    Tier.objects.filter(pk=instrument.tier_id).update(unused_capacity_share=Decimal("0.25"))
    instrument.tier.refresh_from_db()
    page = _preview(web, instrument, side="buy", quantity_mtok="10", price="2.00")
    assert "you still pay 5.00" in page and "25% of unused capacity" in page  # 10 Mtok x 2.00 x 0.25
    Tier.objects.filter(pk=instrument.tier_id).update(unused_capacity_share=Decimal("0"))
    page = _preview(web, instrument, side="buy", quantity_mtok="10", price="2.00")
    assert "you pay nothing" in page


def test_sell_preview_nets_the_taker_fee(instrument, buyer, provider, settings):
    factories.place(buyer, instrument, "buy", 10, "2.00")
    from pricing.services import instrument_match

    instrument_match(instrument_id=instrument.pk)
    page = _preview(logged_in(member(provider)), instrument, side="sell", quantity_mtok="10", price="2.00", hardware="h100")
    fee = (Decimal("20.00") * settings.TAKER_FEE_BPS / 10000).quantize(Decimal("0.01"))
    assert f"{Decimal('20.00') - fee:.2f} CNY = 20.00 less the taker fee {fee:.2f}" in page
