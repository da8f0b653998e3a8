"""Builders for metering tests: a spot instrument, a matched contract, usage events."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from marketplace.models import Account, Instrument, Trade
from pricing.services import instrument_match
from tests import factories

_ids = itertools.count(1)


def spot_instrument(*, tier: str = "standard", region: str = "cn-west-1", hours_left: float = 2) -> Instrument:
    """An instrument whose delivery period started an hour ago and ends in `hours_left` hours."""
    now = timezone.now()
    return factories.open_instrument(
        tier=tier,
        region=region,
        day=now.date(),
        delivery_start=now - dt.timedelta(hours=1),
        delivery_end=now + dt.timedelta(hours=hours_left),
    )


def contract(buyer: Account, provider: Account, instrument: Instrument, mtok: int, price: str, *, maker: str = "provider") -> Trade:
    """Match a sell and a buy; `maker` says whose order rested first (its fee is the maker's)."""
    if maker == "provider":
        factories.place(provider, instrument, "sell", mtok, price)
        factories.place(buyer, instrument, "buy", mtok, price)
    else:
        factories.place(buyer, instrument, "buy", mtok, price)
        factories.place(provider, instrument, "sell", mtok, price)
    instrument_match(instrument_id=instrument.pk)
    return Trade.objects.filter(instrument=instrument, buyer=buyer, seller=provider).latest("match_sequence")


def event(buyer: Account | str, instrument: Instrument | None, *, prompt: int, completion: int = 0, cached: int = 0,
          event_id: str | None = None, at: dt.datetime | None = None, contract_id: int | None = None) -> dict:
    body = {
        "event_id": event_id or f"evt-{next(_ids)}",
        "buyer": buyer if isinstance(buyer, str) else buyer.slug,
        "timestamp": (at or timezone.now()).isoformat().replace("+00:00", "Z"),
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "prompt_tokens_details": {"cached_tokens": cached}},
    }
    if contract_id is not None:
        body["contract"] = contract_id
    else:
        body["instrument"] = instrument.symbol
    return body


def after_grace(instrument: Instrument) -> dt.datetime:
    return instrument.delivery_end + dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS, minutes=1)


def D(x: str) -> Decimal:
    return Decimal(x)
