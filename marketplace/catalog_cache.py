"""The catalog from a per-process cache: tiers, hardware, regions and the instruments that
trade (open or halted), without a query per request.

Every read compares the "catalog" generation (marketplace.cache_generation) with the one the
cache was built under, and rebuilds the whole catalog when it moved; each edit of the catalog
bumps the generation in its own transaction (the services that create, halt, resume and close
instruments, and the admin), so an edit is seen by the next request of every process. The
check is one read of the shared cache (Redis), not a database query. Objects handed out are
copies: a caller may change them without touching the cache.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field

from django.db.models import OuterRef, QuerySet, Subquery

from .cache_generation import (
    CATALOG,
    caching_allowed,
    generation_current,
    generation_listen,
    generation_published,
)
from .models import Hardware, Instrument, Region, Tier

NO_GATE = object()  # an Instrument not loaded through instruments_with_gate


def instruments_with_gate(qs: QuerySet[Instrument]) -> QuerySet[Instrument]:
    """Instruments annotated with `auction_gate_at`: the gate closure of their collecting
    day-ahead auction, or None. Opening and clearing an auction bump the catalog generation,
    so a cached instrument's gate is as current as the rest of the catalog."""
    from pricing.models import CallAuction

    return qs.annotate(
        auction_gate_at=Subquery(
            CallAuction.objects.filter(instrument=OuterRef("pk"), status=CallAuction.Status.COLLECTING).values(
                "gate_closure_at"
            )[:1]
        )
    )


def instrument_auction_gate(instrument: Instrument) -> dt.datetime | None:
    """The gate closure of the instrument's collecting auction, or None; no query when the
    instrument came from the catalog (or instruments_with_gate)."""
    gate = getattr(instrument, "auction_gate_at", NO_GATE)
    if gate is NO_GATE:
        from pricing.models import CallAuction

        gate = (
            CallAuction.objects.filter(instrument_id=instrument.pk, status=CallAuction.Status.COLLECTING)
            .values_list("gate_closure_at", flat=True)
            .first()
        )
    return gate


@dataclass
class _Catalog:
    generation: int
    tiers: list[Tier] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    hardware: list[Hardware] = field(default_factory=list)
    instruments: dict[tuple[str, str, dt.date], Instrument] = field(default_factory=dict)


_current: list[_Catalog] = []


def catalog_cache_clear() -> None:
    _current.clear()


generation_listen(name=CATALOG, clear=catalog_cache_clear)


def _load(generation: int) -> _Catalog:
    cat = _Catalog(generation)
    cat.tiers = list(Tier.objects.all())
    cat.regions = list(Region.objects.all())
    cat.hardware = list(Hardware.objects.prefetch_related("throughputs__tier"))
    trading = instruments_with_gate(Instrument.objects.select_related("tier", "region")).filter(
        status__in=(Instrument.Status.OPEN, Instrument.Status.HALTED)
    )
    cat.instruments = {(i.tier.code, i.region.code, i.delivery_date): i for i in trading}
    return cat


def _catalog() -> _Catalog | None:
    if not caching_allowed():
        # Inside a transaction: serve what was built outside while it is current, never build
        # (see marketplace.cache_generation). Order placement reads hardware in its transaction.
        if _current and generation_published(name=CATALOG) == _current[0].generation:
            return _current[0]
        return None
    generation = generation_current(name=CATALOG)
    if not _current or _current[0].generation != generation:
        # Read the generation before the rows (above): an edit committed after this load moves
        # it, so the next read rebuilds.
        _current[:] = [_load(generation)]
    return _current[0]


def catalog_instrument(*, tier: str, region: str, day: dt.date) -> Instrument | None:
    """The open or halted instrument, from the cache; None if the caller must ask the database
    (not trading, unknown, or no cache inside a transaction)."""
    cat = _catalog()
    inst = cat.instruments.get((tier, region, day)) if cat else None
    return copy.copy(inst) if inst is not None else None


def catalog_hardware_ids() -> dict[str, int]:
    cat = _catalog()
    if cat is None:
        return dict(Hardware.objects.values_list("code", "id"))
    return {h.code: h.pk for h in cat.hardware}


def catalog_tiers() -> list[Tier]:
    cat = _catalog()
    return [copy.copy(t) for t in cat.tiers] if cat else list(Tier.objects.all())


def catalog_regions() -> list[Region]:
    cat = _catalog()
    return [copy.copy(r) for r in cat.regions] if cat else list(Region.objects.all())


def catalog_hardware() -> list[Hardware]:
    cat = _catalog()
    if cat is None:
        return list(Hardware.objects.prefetch_related("throughputs__tier"))
    return [copy.copy(h) for h in cat.hardware]
