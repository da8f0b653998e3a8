"""The energy-cost floor equals a hand computation; sells below it are flagged or refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from marketplace.models import Hardware, Order, Region, Tier
from pricing.floor import energy_floor
from pricing.selectors import energy_floor_list
from tests import factories
from tests.conftest import api_client_for
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db
D = Decimal

# Hand computations from the seeded catalog:
#   kWh per 1M tokens = watts x (1,000,000 / tokens per second) / 3,600,000
#   floor = kWh x electricity price / 0.70, rounded up to the 0.01 tick
# frontier / h100 / cn-west-1: 700 W, 400 tok/s -> 0.486111 kWh x 0.30 = 0.145833 / 0.7 = 0.208333 -> 0.21
# frontier / b200 / eu-central-1: 1000 W, 1000 tok/s -> 0.277778 kWh x 1.40 = 0.388889 / 0.7 = 0.555556 -> 0.56
# standard / ascend-910c / us-east-1: 600 W, 1200 tok/s -> 0.138889 kWh x 0.95 = 0.131944 / 0.7 = 0.188492 -> 0.19
# economy / h100 / cn-east-1: 700 W, 5000 tok/s -> 0.038889 kWh x 0.65 = 0.025278 / 0.7 = 0.036111 -> 0.04
HAND = [
    ("frontier", "h100", "cn-west-1", "0.486111", "0.145833", "0.21"),
    ("frontier", "b200", "eu-central-1", "0.277778", "0.388889", "0.56"),
    ("standard", "ascend-910c", "us-east-1", "0.138889", "0.131944", "0.19"),
    ("economy", "h100", "cn-east-1", "0.038889", "0.025278", "0.04"),
]


@pytest.mark.parametrize("tier, hw, region, kwh, cost, floor", HAND)
def test_floor_equals_the_hand_computation(catalog, tier, hw, region, kwh, cost, floor):
    [row] = energy_floor_list(tier=tier, hardware=hw, region=region)
    assert (row.energy_kwh_per_mtok, row.energy_cost_per_mtok, row.floor) == (D(kwh), D(cost), D(floor))
    # The same number the order flow uses for its flag.
    assert energy_floor(
        tier=Tier.objects.get(code=tier), hardware=Hardware.objects.get(code=hw), region=Region.objects.get(code=region)
    ) == D(floor)


def test_energy_share_is_configurable(catalog):
    with override_settings(ENERGY_SHARE_OF_COST=D("0.50")):
        [row] = energy_floor_list(tier="frontier", hardware="h100", region="cn-west-1")
    assert row.floor == D("0.30")  # 0.145833 / 0.5 = 0.291667 -> 0.30


def test_floors_api_lists_every_pair_and_filters(catalog):
    api = APIClient()
    r = api.get("/api/v1/floors")
    assert r.status_code == 200
    floors = r.json()["floors"]
    assert len(floors) == Tier.objects.count() * Hardware.objects.count() * Region.objects.count()
    r = api.get("/api/v1/floors", {"tier": "frontier", "hardware": "b200", "region": "eu-central-1"})
    assert r.json()["floors"] == [
        {
            "tier": "frontier",
            "hardware": "b200",
            "region": "eu-central-1",
            "watts": 1000,
            "tokens_per_second": 1000,
            "electricity_price_per_kwh": "1.4000",
            "energy_kwh_per_mtok": "0.277778",
            "energy_cost_per_mtok": "0.388889",
            "floor": "0.56",
        }
    ]
    assert r.json()["energy_share_of_cost"] == "0.70"
    r = api.get("/api/v1/floors", {"region": "mars-1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_region"


def test_a_sell_below_the_floor_is_flagged(catalog, provider):
    inst = factories.open_instrument(tier="frontier", region="cn-west-1")
    below = factories.place(provider, inst, "sell", 1, "0.20", hardware="h100")
    at_floor = factories.place(provider, inst, "sell", 1, "0.21", hardware="h100")
    assert below.below_energy_floor and not at_floor.below_energy_floor


def test_an_enforcing_instrument_refuses_a_sell_below_the_floor_with_422(catalog, provider):
    inst = factories.open_instrument(tier="frontier", region="cn-west-1", enforce_energy_floor=True)
    api = api_client_for(provider)
    body = {"instrument": inst.symbol, "side": "sell", "quantity": 1_000_000, "price": "0.20", "hardware": "h100"}
    r = api.post("/api/v1/orders", body, format="json")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "below_energy_floor" and "price" in err["fields"]
    assert Order.objects.count() == 0
    body["price"] = "0.21"
    assert api.post("/api/v1/orders", body, format="json").status_code == 201
    assert_invariants()
