"""factory_boy factories and small builders; each test builds what it needs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import factory
from django.core.management import call_command
from django.utils import timezone

from marketplace import services
from marketplace.cache_generation import CATALOG, generation_bump
from marketplace.models import Account, Instrument, Region, Tier
from metering.services import funds_deposit


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    name = factory.Sequence(lambda n: f"Account {n}")
    slug = factory.Sequence(lambda n: f"account-{n}")
    is_buyer = True
    is_provider = False


def seed_catalog() -> None:
    from io import StringIO

    call_command("seed_catalog", stdout=StringIO())


def open_instrument(*, tier: str = "standard", region: str = "cn-west-1", day: dt.date | None = None, **fields) -> Instrument:
    day = day or (timezone.now().date() + dt.timedelta(days=1))
    inst = services.instrument_create(
        tier=Tier.objects.get(code=tier), region=Region.objects.get(code=region), day=day
    )
    if fields:
        Instrument.objects.filter(pk=inst.pk).update(**fields)
        generation_bump(name=CATALOG)  # as every catalog edit does (marketplace.catalog_cache)
        inst.refresh_from_db()
    return inst


def fund(account: Account, amount: Decimal) -> None:
    funds_deposit(account=account, amount=amount, reason="test funding")


def api_key(account: Account, scopes=("read", "trade")):
    return services.api_key_create(account=account, scopes=list(scopes))


def place(account: Account, instrument: Instrument, side: str, mtok: int, price: str, **kw):
    """Place an order of `mtok` lots (1M tokens each by default) at `price`."""
    if side == "sell":
        kw.setdefault("hardware", "h100")
    return services.order_place(
        account=account,
        instrument=instrument,
        side=side,
        quantity=mtok * instrument.lot_size,
        price=Decimal(price),
        **kw,
    )
