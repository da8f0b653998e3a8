"""POST /api/v1/usage: exactly once per (provider, event_id), a result per event, no 500."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metering.models import UsageEvent
from metering.settlement import settlements_run_due
from tests import factories
from tests.conftest import api_client_for
from tests.invariants import assert_invariants

from .builders import after_grace, contract, event, spot_instrument

pytestmark = pytest.mark.django_db


@pytest.fixture
def market(catalog, buyer, provider):
    inst = spot_instrument(tier="standard")
    trade = contract(buyer, provider, inst, 10, "1.50")
    return inst, trade


def post(client, events):
    return client.post("/api/v1/usage", {"events": events}, format="json")


def test_it_accepts_events_and_computes_billable_tokens_with_tier_weights(provider_api, buyer, market):
    inst, _ = market
    # standard: 1,000 - 200 cached + 200 x 0.25 + 300 x 3 = 800 + 50 + 900 = 1,750
    r = post(provider_api, [event(buyer, inst, prompt=1000, cached=200, completion=300, event_id="a")])
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["accepted"] == 1 and body["results"] == [
        {"index": 0, "event_id": "a", "status": "accepted", "billable_tokens": 1750}
    ]
    e = UsageEvent.objects.get()
    assert (e.input_tokens, e.cached_input_tokens, e.output_tokens, e.billable_tokens) == (1000, 200, 300, 1750)


def test_billable_tokens_round_half_even_to_a_whole_token(provider_api, buyer, market):
    inst, _ = market
    # 3 cached x 0.25 = 0.75 -> prompt 3 (all cached): 0.75 -> 1; 2 cached: 0.5 -> 0 (half-even)
    r = post(provider_api, [event(buyer, inst, prompt=3, cached=3), event(buyer, inst, prompt=2, cached=2)])
    assert [x["billable_tokens"] for x in r.json()["results"]] == [1, 0]


def test_a_repeat_is_a_duplicate_and_another_payload_is_a_conflict(provider_api, buyer, market):
    inst, _ = market
    e = event(buyer, inst, prompt=100, completion=10, event_id="req-1")
    assert post(provider_api, [e]).json()["accepted"] == 1
    other = dict(e, usage={"prompt_tokens": 999, "completion_tokens": 10})
    r = post(provider_api, [e, other, event(buyer, inst, prompt=1, event_id="req-2")]).json()
    assert [x["status"] for x in r["results"]] == ["duplicate", "conflict", "accepted"]
    assert r["results"][1]["reason"] == "conflict"
    assert UsageEvent.objects.count() == 2
    assert UsageEvent.objects.get(event_id="req-1").input_tokens == 100  # the first report stands


def test_the_same_event_twice_in_one_batch_counts_once(provider_api, buyer, market):
    inst, _ = market
    e = event(buyer, inst, prompt=100, event_id="x")
    r = post(provider_api, [e, e, dict(e, usage={"prompt_tokens": 5, "completion_tokens": 0})]).json()
    assert [x["status"] for x in r["results"]] == ["accepted", "duplicate", "conflict"]
    assert UsageEvent.objects.count() == 1


def test_each_bad_event_is_rejected_with_its_reason_and_the_rest_accepted(provider_api, buyer, other_buyer, provider, market):
    inst, trade = market
    now = dt.datetime.now(dt.UTC)
    other_inst = spot_instrument(tier="economy")
    events = [
        event(buyer, inst, prompt=10),  # 0 accepted
        event("nobody", inst, prompt=10),  # 1 unknown buyer
        event(other_buyer, inst, prompt=10),  # 2 no contract with this buyer
        event(buyer, other_inst, prompt=10),  # 3 no contract on this instrument
        dict(event(buyer, inst, prompt=10), instrument="standard:cn-west-1:1999-01-01"),  # 4 unknown instrument
        event(buyer, inst, prompt=-1),  # 5 negative
        event(buyer, inst, prompt=10**12),  # 6 absurd
        event(buyer, inst, prompt=5, cached=6),  # 7 cached > prompt
        event(buyer, inst, prompt=10, at=inst.delivery_start - dt.timedelta(minutes=1)),  # 8 before the period
        event(buyer, inst, prompt=10, at=now + dt.timedelta(days=1)),  # 9 in the future
        {"event_id": "m1", "buyer": buyer.slug},  # 10 malformed: no usage
        "not an object",  # 11 malformed
        dict(event(buyer, inst, prompt=10), timestamp="yesterday"),  # 12 malformed timestamp
        dict(event(buyer, inst, prompt=10), usage={"prompt_tokens": "10", "completion_tokens": 0}),  # 13 malformed
        event(buyer, None, prompt=10, contract_id=trade.pk),  # 14 accepted by contract id
        event(other_buyer, None, prompt=10, contract_id=trade.pk),  # 15 contract is not with this buyer
        dict(event(buyer, inst, prompt=10), event_id=""),  # 16 malformed event id
        dict(event(buyer, inst, prompt=10), usage={"prompt_tokens": 1, "completion_tokens": True}),  # 17 bool
    ]
    r = post(provider_api, events)
    assert r.status_code == 200
    got = [(x["status"], x.get("reason")) for x in r.json()["results"]]
    assert got == [
        ("accepted", None),
        ("rejected", "unknown_buyer"),
        ("rejected", "no_contract"),
        ("rejected", "no_contract"),
        ("rejected", "unknown_instrument"),
        ("rejected", "invalid_counts"),
        ("rejected", "invalid_counts"),
        ("rejected", "invalid_counts"),
        ("rejected", "outside_delivery_period"),
        ("rejected", "outside_delivery_period"),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
        ("accepted", None),
        ("rejected", "no_contract"),
        ("rejected", "malformed"),
        ("rejected", "malformed"),
    ]
    assert all(x.get("message") for x in r.json()["results"] if x["status"] == "rejected")
    assert UsageEvent.objects.count() == 2


def test_a_malformed_envelope_is_a_4xx_for_the_whole_request(provider_api, buyer, market, settings):
    inst, _ = market
    assert provider_api.post("/api/v1/usage", {"events": "x"}, format="json").status_code == 400
    assert provider_api.post("/api/v1/usage", {"nope": []}, format="json").json()["error"]["code"] == "invalid_batch"
    assert provider_api.post("/api/v1/usage", "[1,", content_type="application/json").status_code == 400
    settings.USAGE_BATCH_MAX = 3
    r = post(provider_api, [event(buyer, inst, prompt=1) for _ in range(4)])
    assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"
    # A bare list is accepted too.
    assert provider_api.post("/api/v1/usage", [event(buyer, inst, prompt=1)], format="json").json()["accepted"] == 1
    assert UsageEvent.objects.count() == 1


def test_only_provider_keys_with_the_meter_scope_may_post(buyer, provider, market, buyer_api):
    inst, _ = market
    events = [event(buyer, inst, prompt=1)]
    assert post(api_client_for(provider, ("read", "trade")), events).status_code == 403
    assert post(buyer_api, events).status_code == 403
    mixed = factories.AccountFactory(is_buyer=True, is_provider=True)
    assert post(api_client_for(mixed, ("meter",)), events).json()["results"][0]["reason"] == "no_contract"
    assert UsageEvent.objects.count() == 0


def test_a_provider_cannot_report_on_another_providers_contract(buyer, market, catalog):
    inst, trade = market
    rival = factories.AccountFactory(is_buyer=False, is_provider=True)
    r = post(api_client_for(rival, ("meter",)), [event(buyer, inst, prompt=1), event(buyer, None, prompt=1, contract_id=trade.pk)])
    assert [x["reason"] for x in r.json()["results"]] == ["no_contract", "no_contract"]


def test_late_events_after_the_grace_period_and_after_settlement_are_rejected(provider, buyer, market):
    from metering.usage import usage_ingest

    inst, _ = market
    accepted = event(buyer, inst, prompt=1000, event_id="early")
    assert usage_ingest(provider=provider, events=[accepted]).count("accepted") == 1
    # Within grace (after the period end) a late report is still accepted.
    late_ok = usage_ingest(provider=provider, events=[event(buyer, inst, prompt=1)], now=inst.delivery_end + dt.timedelta(minutes=5))
    assert late_ok.count("accepted") == 1
    too_late = usage_ingest(provider=provider, events=[event(buyer, inst, prompt=1)], now=after_grace(inst))
    assert too_late.results[0].reason == "reported_after_grace"
    settlements_run_due(now=after_grace(inst))
    within = inst.delivery_end + dt.timedelta(minutes=10)
    r = usage_ingest(provider=provider, events=[event(buyer, inst, prompt=1), accepted], now=within)
    assert (r.results[0].status, r.results[0].reason) == ("rejected", "already_settled")
    assert r.results[1].status == "duplicate"  # a repeat is still acknowledged
    assert UsageEvent.objects.count() == 2
    assert_invariants()


def test_a_batch_costs_the_same_queries_for_1_or_500_events(provider_api, buyer, market):
    inst, _ = market

    def count(n: int) -> int:
        with CaptureQueriesContext(connection) as ctx:
            r = post(provider_api, [event(buyer, inst, prompt=10) for _ in range(n)])
        assert r.json()["accepted"] == n
        return len(ctx.captured_queries)

    count(1)  # warm the key's last_used_at touch
    assert count(1) == count(500)
    assert count(500) <= 10
