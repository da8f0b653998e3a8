"""An order renders the same through OrderSerializer's fast to_representation as through its
declared fields: open, filled, cancelled, buys and sells, with and without client ids."""

from __future__ import annotations

import pytest

from marketplace.api.serializers import OrderSerializer
from marketplace.models import Order
from marketplace.services import order_cancel
from pricing.services import instrument_match
from tests import factories

pytestmark = pytest.mark.django_db


def test_every_kind_of_order_renders_as_its_declared_fields_do(buyer, provider, instrument):
    factories.place(provider, instrument, "sell", 2, "1.50", hardware="h200")
    factories.place(buyer, instrument, "buy", 1, "1.5", client_order_id="bot-1", allowed_hardware=["h100", "h200"])
    factories.place(buyer, instrument, "buy", 3, "0.05")
    instrument_match(instrument_id=instrument.pk)
    resting = factories.place(buyer, instrument, "buy", 1, "0.90")
    instrument_match(instrument_id=instrument.pk)
    order_cancel(account=buyer, order_id=resting.pk)
    factories.place(buyer, instrument, "buy", 1, "0.80")  # not yet matched: no sequence
    orders = list(Order.objects.select_related("instrument__tier", "instrument__region", "hardware"))
    assert {o.status for o in orders} >= {"filled", "partially_filled", "open", "cancelled"}
    for order in orders:
        ser = OrderSerializer(order)
        assert ser.data == ser.to_representation_by_fields(order)
    many = OrderSerializer(orders, many=True).data
    assert many == [OrderSerializer(o).to_representation_by_fields(o) for o in orders]
