"""Energy-cost floor per hardware x region: below it a provider sells under its power bill.

energy per 1M tokens (kWh) = watts x (1,000,000 / tokens per second) s / 3,600,000 J per kWh
energy cost per 1M tokens  = that x the region's electricity price per kWh
floor                      = energy cost / energy share of total cost (0.70 by default)
Rounded up to the instrument's tick, so a price at the floor covers it.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from django.conf import settings

from marketplace.models import Hardware, HardwareThroughput, Instrument, Region, Tier

J_PER_KWH = Decimal(3_600_000)
MTOK = Decimal(1_000_000)


def energy_cost_per_mtok(*, watts: int, tokens_per_second: int, price_per_kwh: Decimal) -> Decimal:
    kwh = Decimal(watts) * MTOK / Decimal(tokens_per_second) / J_PER_KWH
    return kwh * price_per_kwh


def energy_floor(
    *, tier: Tier, hardware: Hardware, region: Region, tick: Decimal = Decimal("0.01")
) -> Decimal | None:
    """The floor price per 1M tokens, or None when the catalog has no throughput figure."""
    tp = HardwareThroughput.objects.filter(tier=tier, hardware=hardware).values_list("tokens_per_second", flat=True).first()
    if not tp:
        return None
    cost = energy_cost_per_mtok(
        watts=hardware.watts_per_accelerator, tokens_per_second=tp, price_per_kwh=region.electricity_price_per_kwh
    )
    floor = cost / settings.ENERGY_SHARE_OF_COST
    return (floor / tick).to_integral_value(rounding=ROUND_CEILING) * tick


def order_below_floor(*, instrument: Instrument, hardware_code: str | None, price: Decimal) -> bool:
    if not hardware_code:
        return False
    hw = Hardware.objects.filter(code=hardware_code).first()
    if hw is None:
        return False
    floor = energy_floor(tier=instrument.tier, hardware=hw, region=instrument.region, tick=instrument.tick_size)
    return floor is not None and price < floor
