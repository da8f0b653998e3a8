"""The demo market's simulation: a past month of trading for `seed_demo`, and the live ticks of
simulated traders while `make run` is up (README "The demo market").

Everything goes through the exchange's own services, with the clock passed in (`now`) where a
service takes one: order placement, the matcher, usage ingestion, settlement and the index. So
the history obeys every invariant the live market does, and the checker in tests/invariants.py
passes after it. The model, per tier x region x delivery day:
- a day's price level = the region's reference (the tier's typical price moved by the region's
  electricity price: cn-west is cheapest, seed_demo._regional_reference) times a slow random
  walk, never below the energy-cost floor of the hardware selling;
- providers serving the region rest two sells at the start of the day (two hardware, a few
  ticks apart); buyers lift them at four hours of the day with immediate-or-cancel buys whose
  size follows the demand curve (a peak at 14:00 UTC; frontier draws twice the demand of
  batch), so the peak trades deeper into the ladder, at higher prices;
- after the day, each provider reports usage against its contracts, most delivered in full,
  some under-delivered (60-90%); then the day settles and the index for it is published.
A seeded random generator makes the history the same on every machine.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db.models import Max, Sum
from django.utils import timezone

from metering.settlement import instrument_settle
from metering.usage import usage_ingest
from pricing.dispatch import match_queueing_suspended
from pricing.index import index_publish
from pricing.services import instrument_match

from . import services
from .catalog_defaults import REFERENCE_PRICE
from .errors import ServiceError
from .market_snapshot import reference_price_get
from .models import LIVE_STATUSES, Account, Hardware, Instrument, Order, Region, Side, Tier, TimeInForce, Trade

# The demo's participants: providers with the regions and hardware they serve, buyers with
# their opening deposit (seed_demo creates them; the simulation trades as them).
PROVIDERS = [
    ("Xiling Compute", ["cn-west-1", "cn-east-1"], ["h100", "h200", "ascend-910c"]),
    ("Atlantic GPU Cloud", ["us-east-1"], ["h100", "b200", "mi300x"]),
    ("Rhein AI Power", ["eu-central-1", "ap-southeast-1"], ["h200", "tpu-v7"]),
]
BUYERS = [("Agentic Labs", Decimal("500000")), ("Lotus Apps", Decimal("250000"))]

# Hours (UTC) at which buyers trade on a simulated day, and the demand at each: the peak is the
# Asian evening / European afternoon.
DEMAND_BY_HOUR = {4: Decimal("0.6"), 14: Decimal("1.8"), 20: Decimal("1.0")}
# Today, whose book the instrument page charts first, trades every three hours on the same curve.
TODAY_DEMAND_BY_HOUR = {
    1: Decimal("0.5"), 4: Decimal("0.6"), 7: Decimal("0.8"), 10: Decimal("1.2"), 13: Decimal("1.7"),
    16: Decimal("1.6"), 19: Decimal("1.1"), 22: Decimal("0.7"),
}  # fmt: skip
# Days further back than this are simulated lighter, so `seed_demo` stays well under a minute on
# SQLite: one region per tier per day (rotating, so every region has its history), one sell,
# and one matcher run per book, at the peak hour, instead of one per demand hour.
DETAILED_DAYS = 3
# Lots a day of each tier draws at demand 1.0: frontier capacity is scarce and wanted most.
TIER_DEMAND_LOTS = {"frontier": 24, "standard": 18, "economy": 14, "batch": 12}
SIM_PREFIX = "sim-"  # client order ids and usage event ids of the simulation


@dataclass
class DemoRoster:
    """Who trades in the simulation: the demo providers (with the regions and hardware each
    serves) and the demo buyers."""

    providers: list[tuple[Account, list[str], list[str]]]
    buyers: list[Account]

    def providers_in(self, region: str) -> list[tuple[Account, list[str]]]:
        return [(a, hw) for a, regions, hw in self.providers if region in regions]


def demo_roster() -> DemoRoster:
    """The demo accounts seed_demo created (KeyError if it has not run)."""
    from django.utils.text import slugify

    by_slug = {a.slug: a for a in Account.objects.filter(slug__in=[slugify(p[0]) for p in PROVIDERS + BUYERS])}
    return DemoRoster(
        providers=[(by_slug[slugify(n)], regions, hw) for n, regions, hw in PROVIDERS],
        buyers=[by_slug[slugify(n)] for n, _ in BUYERS],
    )


def regional_reference() -> dict[tuple[str, str], Decimal]:
    """Each tier's reference price per region, moved by the region's electricity price: about
    70% of a token's cost is energy, so cn-west (0.30 CNY/kWh) sells cheaper than the US or EU.
    price = reference x (0.3 + 0.7 x electricity / mean electricity), to the cent."""
    prices = {r.code: r.electricity_price_per_kwh for r in Region.objects.all()}
    mean = sum(prices.values()) / len(prices)
    share = settings.ENERGY_SHARE_OF_COST
    return {
        (tier, region): (ref * ((1 - share) + share * kwh / mean)).quantize(Decimal("0.01"))
        for tier, ref in REFERENCE_PRICE.items()
        for region, kwh in prices.items()
    }


@dataclass
class HistoryReport:
    days: int = 0
    orders: int = 0
    trades: int = 0
    usage_events: int = 0
    settled: int = 0


def _tick(price: Decimal, tick: Decimal) -> Decimal:
    return (price / tick).to_integral_value(rounding=ROUND_HALF_UP) * tick


def _floors(tier: Tier, region: Region, hardware: list[str]) -> dict[str, Decimal]:
    from pricing.floor import energy_floor

    out = {}
    for hw in Hardware.objects.filter(code__in=hardware):
        floor = energy_floor(tier=tier, hardware=hw, region=region)
        out[hw.code] = floor if floor is not None else Decimal("0.01")
    return out


def demo_day_simulate(
    *,
    day: dt.date,
    roster: DemoRoster,
    anchors: dict[tuple[str, str], Decimal],
    walk: dict[tuple[str, str], Decimal],
    rng: random.Random,
    until: dt.datetime | None = None,
    books: set[tuple[str, str]] | None = None,
    intraday: bool = True,
) -> HistoryReport:
    """Trade one delivery day's books (all, or `books`) at its demand hours (those before
    `until`, if given): matched hour by hour if `intraday`, else once, at the peak."""
    report = HistoryReport(days=1)
    start, _ = Instrument.period_for(day)
    tiers = {t.code: t for t in Tier.objects.all()}
    regions = {r.code: r for r in Region.objects.all()}
    curve = DEMAND_BY_HOUR if until is None else TODAY_DEMAND_BY_HOUR
    hours = [h for h in curve if until is None or start + dt.timedelta(hours=h, minutes=30) < until]
    if not hours:
        return report
    peak = max(DEMAND_BY_HOUR, key=DEMAND_BY_HOUR.__getitem__)
    chosen = [k for k in sorted(anchors) if roster.providers_in(k[1]) and (books is None or k in books)]
    # All of the day's books first: each creation moves the catalog generation, and the next
    # read of the catalog reloads it, so creating them one by one between orders would reload
    # the catalog once per book.
    instruments = {}
    for tier_code, region_code in chosen:
        inst = services.instrument_create(tier=tiers[tier_code], region=regions[region_code], day=day)
        instruments[(tier_code, region_code)] = inst.pk
    loaded = Instrument.objects.select_related("tier", "region").in_bulk(list(instruments.values()))
    for tier_code, region_code in chosen:
        anchor = anchors[(tier_code, region_code)]
        sellers = roster.providers_in(region_code)
        tier, region = tiers[tier_code], regions[region_code]
        inst = loaded[instruments[(tier_code, region_code)]]
        if inst.status != Instrument.Status.OPEN or Trade.objects.filter(instrument=inst).exists():
            continue  # closed by the roll before it could be simulated, or simulated already
        # The day's level: a slow walk (at most 1.5% a day), mean-reverting to the anchor.
        key = (tier_code, region_code)
        walk[key] = walk.get(key, Decimal(1)) * Decimal(1 + rng.uniform(-0.015, 0.015)) * Decimal("0.98") + Decimal("0.02")
        level = anchor * walk[key]
        provider, hardware = sellers[rng.randrange(len(sellers))]
        floors = _floors(tier, region, hardware[:2])
        lots = TIER_DEMAND_LOTS.get(tier_code, 12)
        open_at = start + dt.timedelta(minutes=5)
        for i, hw in enumerate(hardware[: 2 if intraday else 1]):
            price = max(_tick(level * (1 + Decimal("0.02") * i), inst.tick_size), floors.get(hw, inst.tick_size))
            services.order_place(
                account=provider, instrument=inst, side=Side.SELL, quantity=inst.lot_size * lots * max(2, len(hours) * 2 // 3),
                price=price, hardware=hw, now=open_at, client_order_id=f"{SIM_PREFIX}{inst.pk}-ask{i}",
            )  # fmt: skip
            report.orders += 1
        if intraday:
            instrument_match(instrument_id=inst.pk, now=open_at)
        for hour in hours:
            at = start + dt.timedelta(hours=hour, minutes=rng.randrange(0, 50))
            if until is not None:
                at = min(at, until - dt.timedelta(minutes=1))  # never a trade in the future
            demand = curve[hour] * Decimal(rng.uniform(0.8, 1.2))
            quantity = max(1, int(lots * demand)) * inst.lot_size
            if not intraday:
                quantity = min(quantity, inst.lot_size * (lots * 2 // 3))  # the one sell serves all three
            buyer = roster.buyers[rng.randrange(len(roster.buyers))]
            # The buyer pays up to 4% over the day's level: enough to reach the second sell at the peak.
            limit = _tick(level * Decimal("1.04"), inst.tick_size)
            try:
                services.order_place(
                    account=buyer, instrument=inst, side=Side.BUY, quantity=quantity, price=limit,
                    time_in_force=TimeInForce.IOC, now=at, client_order_id=f"{SIM_PREFIX}{inst.pk}-{hour}",
                )  # fmt: skip
            except ServiceError as exc:
                if exc.code == "insufficient_funds":
                    continue
                raise
            report.orders += 1
            if intraday:
                report.trades += instrument_match(instrument_id=inst.pk, now=at).trades
        if not intraday:
            report.trades += instrument_match(instrument_id=inst.pk, now=start + dt.timedelta(hours=peak, minutes=55)).trades
    return report


def demo_usage_report(*, day: dt.date, rng: random.Random, now: dt.datetime) -> int:
    """Each provider reports usage of its contracts of `day`: per buyer and book, 90-100% of what
    was bought, and 60-90% on one pair in five (under-delivery the settlement refunds)."""
    start, end = Instrument.period_for(day)
    contracted = (
        Trade.objects.filter(instrument__delivery_date=day, settlement__isnull=True)
        .values("seller_id", "buyer__slug", "instrument_id", "instrument__tier__code", "instrument__region__code")
        .annotate(tokens=Sum("quantity"))
        .order_by("seller_id", "instrument_id", "buyer__slug")
    )
    # The latest trade per book (dict keeps the last of each): every pair's contracts have
    # started by then, so no event falls before its pair's first trade.
    latest_trade = dict(
        Trade.objects.filter(instrument__delivery_date=day)
        .values_list("instrument_id", "executed_at")
        .order_by("instrument_id", "executed_at")
    )
    tiers = {t.code: t for t in Tier.objects.all()}
    batches: dict[int, list[dict]] = defaultdict(list)
    for row in contracted:
        share = rng.uniform(0.6, 0.9) if rng.random() < 0.2 else rng.uniform(0.9, 1.0)
        billable = int(row["tokens"] * share)
        tier = tiers[row["instrument__tier__code"]]
        begin = max(start, latest_trade[row["instrument_id"]]) + dt.timedelta(minutes=1)
        symbol = f"{tier.code}:{row['instrument__region__code']}:{day.isoformat()}"
        parts = max(2, -(-billable // 50_000_000))  # events under the per-event cap
        for n in range(parts):
            tokens = billable // parts + (billable % parts if n == 0 else 0)
            completion = tokens // 10
            # prompt + completion x output weight = the billable tokens of this part.
            prompt = max(0, tokens - int(completion * tier.output_token_weight))
            at = begin + (end - begin - dt.timedelta(minutes=2)) * (n + 1) / (parts + 1)
            batches[row["seller_id"]].append({
                "event_id": f"{SIM_PREFIX}{row['instrument_id']}-{row['buyer__slug']}-{n}",
                "buyer": row["buyer__slug"],
                "instrument": symbol,
                "timestamp": at.isoformat(),
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
            })  # fmt: skip
    accepted = 0
    for seller_id, events in batches.items():
        provider = Account.objects.get(pk=seller_id)
        for i in range(0, len(events), settings.USAGE_BATCH_MAX):
            accepted += usage_ingest(provider=provider, events=events[i : i + settings.USAGE_BATCH_MAX], now=now).count(
                "accepted"
            )
    return accepted


def demo_history_build(
    *,
    roster: DemoRoster,
    anchors: dict[tuple[str, str], Decimal],
    days: int,
    now: dt.datetime | None = None,
    progress: Callable[[str], None] | None = None,
    seed: int = 13,
) -> HistoryReport:
    """Simulate the `days` delivery days before today, then today's hours so far.

    A past day is simulated only if its books never traded (a re-run the same day, or after
    the live simulation traded, adds nothing); each is then delivered, settled and indexed.
    """
    with match_queueing_suspended():  # it matches every book itself
        return _history_build(roster=roster, anchors=anchors, days=days, now=now or timezone.now(), progress=progress, seed=seed)


def _history_build(
    *,
    roster: DemoRoster,
    anchors: dict[tuple[str, str], Decimal],
    days: int,
    now: dt.datetime,
    progress: Callable[[str], None] | None,
    seed: int,
) -> HistoryReport:
    today = now.astimezone(dt.UTC).date()
    rng = random.Random(seed)
    walk: dict[tuple[str, str], Decimal] = {}
    total = HistoryReport()
    grace = dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS)
    for offset in range(days, 0, -1):
        day = today - dt.timedelta(days=offset)
        _, end = Instrument.period_for(day)
        if _day_started(day):
            continue
        detailed = offset <= DETAILED_DAYS
        books = None
        if not detailed:
            regions = sorted({r for _, r in anchors})
            tiers = sorted({t for t, _ in anchors})
            books = {(t, regions[(offset + i) % len(regions)]) for i, t in enumerate(tiers)}
        rep = demo_day_simulate(
            day=day, roster=roster, anchors=anchors, walk=walk, rng=rng, books=books, intraday=detailed
        )
        rep.usage_events = demo_usage_report(day=day, rng=rng, now=min(end + dt.timedelta(minutes=30), now))
        settle_at = min(end + grace + dt.timedelta(minutes=1), now)
        for inst_id in Instrument.objects.filter(delivery_date=day).values_list("id", flat=True):
            if settle_at >= end + grace:
                rep.settled += instrument_settle(instrument_id=inst_id, now=settle_at).contracts
            else:  # yesterday, still in its grace period: closed now, settled by the periodic task
                services.instrument_close(instrument_id=inst_id, now=end)
        index_publish(now=settle_at)
        _add(total, rep)
        if progress:
            progress(f"{day}: {rep.orders} orders, {rep.trades} trades, {rep.usage_events} usage events, {rep.settled} contracts settled")
    if not _day_started(today):
        rep = demo_day_simulate(day=today, roster=roster, anchors=anchors, walk=walk, rng=rng, until=now)
        index_publish(now=now)
        _add(total, rep)
        if progress:
            progress(f"{today} (today so far): {rep.orders} orders, {rep.trades} trades")
    return total


def _day_started(day: dt.date) -> bool:
    """Whether the day traded, or the simulation began it (a run stopped half-way through a
    day is not repeated: its orders' client ids are taken)."""
    return (
        Trade.objects.filter(instrument__delivery_date=day).exists()
        or Order.objects.filter(instrument__delivery_date=day, client_order_id__startswith=SIM_PREFIX).exists()
    )


def _add(total: HistoryReport, rep: HistoryReport) -> None:
    total.days += rep.days
    total.orders += rep.orders
    total.trades += rep.trades
    total.usage_events += rep.usage_events
    total.settled += rep.settled


# --- the live simulation (a Celery beat task while `make run` is up) -------------------------

LIVE_PREFIX = f"{SIM_PREFIX}live-"
LIVE_BOOKS_PER_TICK = 3
LIVE_ORDERS_PER_BOOK = 6  # resting simulated orders kept per book; older ones are cancelled


@dataclass
class TickReport:
    placed: int = 0
    cancelled: int = 0
    usage_events: int = 0
    refused: list[str] = field(default_factory=list)


def demo_simulation_tick(*, now: dt.datetime | None = None, rng: random.Random | None = None) -> TickReport:
    """One tick of the live demo: on a few of today's books, simulated traders cancel their
    oldest resting orders and place new ones around the last trade (some crossing, so trades
    print); providers report the usage delivered so far on today's contracts.

    Orders go through order_place and cancels through order_cancel_request, so the matcher
    (a Celery worker) applies them as it applies anyone's; nothing here touches rows directly.
    """
    now = now or timezone.now()
    rng = rng or random.Random()
    report = TickReport()
    try:
        roster = demo_roster()
    except KeyError:
        return report  # no demo accounts: nothing to simulate
    anchors = regional_reference()
    today = now.astimezone(dt.UTC).date()
    books = list(
        Instrument.objects.select_related("tier", "region")
        .filter(delivery_date=today, status=Instrument.Status.OPEN, delivery_end__gt=now)
        .order_by("id")
    )
    for inst in rng.sample(books, min(LIVE_BOOKS_PER_TICK, len(books))):
        sellers = roster.providers_in(inst.region.code)
        if not sellers:
            continue
        reference = reference_price_get(instrument_id=inst.pk) or anchors.get((inst.tier.code, inst.region.code))
        if reference is None:
            continue
        report.cancelled += _live_cancel_oldest(inst=inst, now=now)
        provider, hardware = sellers[rng.randrange(len(sellers))]
        buyer = roster.buyers[rng.randrange(len(roster.buyers))]
        lots = rng.randint(1, 6)
        ask = max(_tick(reference * Decimal(1 + rng.uniform(0.0, 0.03)), inst.tick_size), inst.tick_size)
        # One buy in three crosses the book (up to 3% over the reference): trades print.
        over = rng.uniform(0.0, 0.03) if rng.random() < 1 / 3 else rng.uniform(-0.04, -0.005)
        bid = max(_tick(reference * Decimal(1 + over), inst.tick_size), inst.tick_size)
        for account, side, price, extra in (
            (provider, Side.SELL, ask, {"hardware": hardware[rng.randrange(len(hardware))]}),
            (buyer, Side.BUY, bid, {}),
        ):
            try:
                services.order_place(
                    account=account, instrument=inst, side=side, quantity=inst.lot_size * lots, price=price,
                    now=now, client_order_id=f"{LIVE_PREFIX}{rng.getrandbits(64):016x}", **extra,
                )  # fmt: skip
                report.placed += 1
            except ServiceError as exc:
                # A demo buyer out of funds, a book that just closed or went to auction: skip it.
                report.refused.append(exc.code)
    report.usage_events = _live_usage_report(roster=roster, today=today, now=now)
    return report


def _live_cancel_oldest(*, inst: Instrument, now: dt.datetime) -> int:
    live = list(
        Order.objects.filter(
            instrument=inst, status__in=LIVE_STATUSES, client_order_id__startswith=LIVE_PREFIX,
            cancel_requested_at__isnull=True,
        ).order_by("id").values_list("id", "account_id")
    )  # fmt: skip
    cancelled = 0
    for order_id, account_id in live[: max(0, len(live) - LIVE_ORDERS_PER_BOOK + 2)]:
        try:
            services.order_cancel_request(account=Account(pk=account_id), order_id=order_id, now=now)
            cancelled += 1
        except ServiceError:
            pass  # filled or cancelled meanwhile
    return cancelled


def _live_usage_report(*, roster: DemoRoster, today: dt.date, now: dt.datetime) -> int:
    """Usage delivered so far: per provider, buyer and book of today, 95% of the contracted
    tokens times the share of the day gone, less what was already reported."""
    start, end = Instrument.period_for(today)
    gone = Decimal((now - start) / (end - start))
    providers = {a.pk: a for a, _, _ in roster.providers}
    contracted = (
        Trade.objects.filter(instrument__delivery_date=today, seller_id__in=list(providers), settlement__isnull=True)
        .values("seller_id", "buyer_id", "buyer__slug", "instrument_id", "instrument__tier__code", "instrument__region__code")
        .annotate(tokens=Sum("quantity"), latest=Max("executed_at"))
    )
    from metering.models import UsageEvent

    reported = {
        (r["provider_id"], r["buyer_id"], r["instrument_id"]): r["b"]
        for r in UsageEvent.objects.filter(instrument__delivery_date=today, provider_id__in=list(providers))
        .values("provider_id", "buyer_id", "instrument_id")
        .annotate(b=Sum("billable_tokens"))
    }
    batches: dict[int, list[dict]] = defaultdict(list)
    at = now - dt.timedelta(seconds=1)
    for row in contracted:
        due = int(row["tokens"] * Decimal("0.95") * gone) - reported.get((row["seller_id"], row["buyer_id"], row["instrument_id"]), 0)
        # In steps of at least 1% of the contract: a report per pair per tick would pile up rows.
        if due < max(1000, row["tokens"] // 100) or row["latest"] >= at:
            continue
        symbol = f"{row['instrument__tier__code']}:{row['instrument__region__code']}:{today.isoformat()}"
        batches[row["seller_id"]].append({
            "event_id": f"{LIVE_PREFIX}{row['instrument_id']}-{row['buyer__slug']}-{now:%H%M%S%f}",
            "buyer": row["buyer__slug"],
            "instrument": symbol,
            "timestamp": at.isoformat(),
            "usage": {"prompt_tokens": min(due, 100_000_000), "completion_tokens": 0},
        })  # fmt: skip
    accepted = 0
    for seller_id, events in batches.items():
        accepted += usage_ingest(provider=providers[seller_id], events=events[: settings.USAGE_BATCH_MAX], now=now).count(
            "accepted"
        )
    return accepted
