"""The Token Price Index: per tier and UTC trade date, the volume-weighted average price of every
trade on that tier's order books (all regions, all hardware, all delivery dates).

    value(tier, day) = sum(price x quantity) / sum(quantity)   over trades executed on `day`

rounded half-even to 4 decimal places (currency per 1M tokens). A day without trades has no
value (the history has a gap; nothing is carried forward). The value of the current day is
provisional and republished by a periodic task; once the day is over it is final and never
changes again. Methodology: docs/readme/pricing.md.
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from marketplace.models import Trade

from .models import IndexValue
from .selectors import notional_expr, vwap


def index_compute(*, start: dt.date, end: dt.date) -> list[dict]:
    """Index rows for trade dates in [start, end], computed in the database."""
    lo = dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC)
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    rows = (
        Trade.objects.filter(executed_at__gte=lo, executed_at__lt=hi)
        .annotate(day=TruncDate("executed_at", tzinfo=dt.UTC))
        .values("instrument__tier_id", "day")
        .annotate(
            volume=Sum("quantity"),
            notional=Sum(notional_expr()),
            trades=Count("id"),
            instruments=Count("instrument", distinct=True),
        )
        .order_by("instrument__tier_id", "day")
    )
    return [
        {
            "tier_id": r["instrument__tier_id"],
            "day": r["day"],
            "value": vwap(r["notional"], r["volume"]),
            "volume": int(r["volume"]),
            "trades": r["trades"],
            "instruments": r["instruments"],
        }
        for r in rows
    ]


def index_publish(*, now: dt.datetime | None = None) -> list[IndexValue]:
    """Publish (insert or update) every index value that can still change: the days since the
    oldest non-final value or, on the first run, since the first trade; up to today. Values of
    days that have ended are marked final. Idempotent: running it twice changes nothing."""
    now = now or timezone.now()
    today = now.astimezone(dt.UTC).date()
    last_final = IndexValue.objects.filter(is_final=True).order_by("-day").values_list("day", flat=True).first()
    if last_final is not None:
        start = last_final + dt.timedelta(days=1)
    else:
        first = Trade.objects.order_by("executed_at").values_list("executed_at", flat=True).first()
        if first is None:
            return []
        start = first.astimezone(dt.UTC).date()
    published = []
    with transaction.atomic():
        for row in index_compute(start=start, end=today):
            value, _ = IndexValue.objects.update_or_create(
                tier_id=row["tier_id"],
                day=row["day"],
                defaults={
                    "value": row["value"],
                    "volume": row["volume"],
                    "trades": row["trades"],
                    "instruments": row["instruments"],
                    "is_final": row["day"] < today,
                    "published_at": now,
                },
            )
            published.append(value)
        # Days that ended since the last run without a new trade become final as they are.
        IndexValue.objects.filter(is_final=False, day__lt=today).update(is_final=True)
    return published
