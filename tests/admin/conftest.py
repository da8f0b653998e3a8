from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.models import Account, Instrument, Trade
from metering.settlement import settlements_run_due
from metering.usage import usage_ingest
from pricing.services import instrument_match
from tests import factories
from tests.web.conftest import otp_verified

_event_ids = itertools.count(1)


@dataclass
class WorkedExample:
    d1: dt.date
    d2: dt.date
    p1: Account
    p2: Account
    b1: Account
    b2: Account
    i1: Instrument
    i2: Instrument
    i3: Instrument
    c1: Trade
    c2: Trade
    c3: Trade
    c4: Trade


def _contract(buyer, provider, inst, mtok: int, price: str, *, maker: str) -> Trade:
    first, second = (
        ((provider, "sell"), (buyer, "buy")) if maker == "provider" else ((buyer, "buy"), (provider, "sell"))
    )
    factories.place(first[0], inst, first[1], mtok, price)
    instrument_match(instrument_id=inst.pk)
    factories.place(second[0], inst, second[1], mtok, price)
    instrument_match(instrument_id=inst.pk)
    return Trade.objects.filter(instrument=inst, buyer=buyer, seller=provider).latest("match_sequence")


def _usage(provider, buyer, inst, tokens: int, *, at: dt.datetime, now: dt.datetime | None = None) -> None:
    # Prompt tokens only, no cache, no completion: billable = prompt tokens.
    events = []
    while tokens:
        n = min(tokens, 5_000_000)
        tokens -= n
        events.append(
            {
                "event_id": f"we-{next(_event_ids)}",
                "buyer": buyer.slug,
                "instrument": inst.symbol,
                "timestamp": at.isoformat().replace("+00:00", "Z"),
                "usage": {"prompt_tokens": n, "completion_tokens": 0},
            }
        )
    report = usage_ingest(provider=provider, events=events, now=now)
    assert report.count("accepted") == len(events), report.as_dict()


@pytest.fixture
def worked_example(catalog, settings) -> WorkedExample:
    """Four contracts traded, delivered and settled through the real services.

    Fees: maker 5 bps, taker 10 bps. Unused-capacity share: standard 0.25, frontier 0.5.
    escrow = value at full quantity + buyer fee, each rounded up; paid value =
    (delivered + share x unused) x price, half-even; fees half-even; payout = value - seller
    fee; refund = escrow - value - buyer fee; usage beyond a pair's contracts is overage.

    c1 standard:cn-west-1:D1 b1<-p1 10M @ 2.00 (provider maker: buyer 10 bps, seller 5 bps)
       usage 8M -> delivered 8M, unused 2M: value (8 + 0.5) x 2.00 = 17.00
       fees 0.017 -> 0.02 + 0.0085 -> 0.01; escrow 20.00 + 0.02 = 20.02; refund 3.00; payout 16.99
    c2 standard:cn-west-1:D1 b2<-p1 5M @ 2.10 (buyer maker: buyer 5 bps, seller 10 bps)
       usage 7M -> delivered 5M, overage 2M: value 10.50
       fees 0.00525 -> 0.01 + 0.0105 -> 0.01; escrow 10.50 + 0.01 = 10.51; refund 0.00; payout 10.49
    c3 frontier:us-east-1:D1 b1<-p2 4M @ 8.00 (provider maker)
       usage 1M -> delivered 1M, unused 3M: value (1 + 1.5) x 8.00 = 20.00
       fees 0.02 + 0.01; escrow 32.00 + 0.04 = 32.04; refund 12.02; payout 19.99
    c4 standard:cn-west-1:D2 b2<-p2 20M @ 1.50 (provider maker)
       usage 20.5M -> delivered 20M, overage 0.5M: value 30.00
       fees 0.03 + 0.015 -> 0.02; escrow 30.00 + 0.03 = 30.03; refund 0.00; payout 29.98
    """
    settings.MAKER_FEE_BPS = 5
    settings.TAKER_FEE_BPS = 10
    now = timezone.now()
    d1 = now.date()
    d2 = d1 + dt.timedelta(days=1)
    p1 = factories.AccountFactory(name="Provider One", slug="p1", is_buyer=False, is_provider=True)
    p2 = factories.AccountFactory(name="Provider Two", slug="p2", is_buyer=False, is_provider=True)
    b1 = factories.AccountFactory(name="Buyer One", slug="b1")
    b2 = factories.AccountFactory(name="Buyer Two", slug="b2")
    for b in (b1, b2):
        factories.fund(b, Decimal("1000.00"))
    # D1 instruments are spot: their delivery started an hour ago, so usage can be reported now.
    spot = {"delivery_start": now - dt.timedelta(hours=1), "delivery_end": now + dt.timedelta(hours=2)}
    i1 = factories.open_instrument(tier="standard", region="cn-west-1", day=d1, **spot)
    i2 = factories.open_instrument(tier="frontier", region="us-east-1", day=d1, **spot)
    i3 = factories.open_instrument(tier="standard", region="cn-west-1", day=d2)

    c1 = _contract(b1, p1, i1, 10, "2.00", maker="provider")
    c2 = _contract(b2, p1, i1, 5, "2.10", maker="buyer")
    c3 = _contract(b1, p2, i2, 4, "8.00", maker="provider")
    c4 = _contract(b2, p2, i3, 20, "1.50", maker="provider")

    at = timezone.now()
    _usage(p1, b1, i1, 8_000_000, at=at)
    _usage(p1, b2, i1, 7_000_000, at=at)
    _usage(p2, b1, i2, 1_000_000, at=at)
    d2_at = i3.delivery_start + dt.timedelta(hours=1)
    _usage(p2, b2, i3, 20_500_000, at=d2_at, now=d2_at + dt.timedelta(minutes=1))

    after = i3.delivery_end + dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS, minutes=1)
    assert settlements_run_due(now=after).contracts == 4
    return WorkedExample(d1, d2, p1, p2, b1, b2, i1, i2, i3, c1, c2, c3, c4)


@pytest.fixture
def superuser(db, django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-1234")


@pytest.fixture
def staff_client(client, superuser):
    client.force_login(superuser)
    return otp_verified(client, superuser)  # admin requires two-factor sign-in for staff
