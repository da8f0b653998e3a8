"""Settlement of delivery contracts, after the delivery period plus the grace period.

Method (per instrument, per buyer-provider pair):
1. The pair's usage (sum of billable tokens of its accepted events) is allocated to the pair's
   contracts oldest first (by match_sequence): each takes up to its quantity. What is left
   after the newest contract is overage: recorded on that contract's Settlement, not charged.
2. Each contract pays (metering.money), every term read from the trade, where it was frozen
   when the contract was made, never from today's catalog or settings:
       exact value = (delivered + trade.unused_capacity_share x unused) x price / 1M
       value       = exact value rounded half-even to the cent (at most the contract's escrow)
       buyer fee   = exact value x buyer_fee_bps / 10,000, by the running-total rule
       seller fee  = exact value x seller_fee_bps / 10,000, by the running-total rule
       provider    = value - seller fee                  -> provider's available
       fees        = buyer fee + seller fee              -> the platform's fees account
       refund      = buyer_escrow - value - buyer fee    -> buyer's available
   Running-total rule (money.fees_running): per account and role on the instrument, exact fees
   are summed oldest contract first and the running total is rounded once; each contract is
   charged what the rounded total rose by, so splitting a trade into fills changes no fee.
   The whole instrument's amounts are computed once, from its final contracts and usage
   (settlement runs after the grace period, when usage is closed), so chunks, re-runs and
   concurrent settlers charge the same cents. Every part is derived by subtraction from the
   escrow, so the transaction sums to zero by construction. Provider proceeds land in `available` at once: settlement runs only after
   the grace period, when the amounts are final, so there is nothing left to hold back.

Exactly once per contract: Settlement's primary key is the trade and its ledger transaction's
key is `settle:<trade id>`; and settlers of one instrument take an exclusive advisory lock on
it (usage ingestion holds the same lock shared) and SELECT ... FOR UPDATE its trades before
re-reading which are settled. Work is committed in chunks of whole pairs: a crash loses at most
the chunk in flight, which rolls back completely, and a re-run settles what is left.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from marketplace.display import price_text
from marketplace.models import Instrument, Trade
from marketplace.services import NotFound, ServiceError, instrument_close

from . import money
from .ledger import Posting, ledger_account_ids, ledger_post_many, system_account
from .models import LedgerAccount, LedgerTransaction, Settlement, UsageEvent
from .usage import SETTLEMENT_LOCK_NAMESPACE

DEFAULT_CHUNK_CONTRACTS = 2000

log = logging.getLogger(__name__)


def allocate(*, usage: int, quantities: Sequence[int]) -> tuple[list[int], int]:
    """Fill contracts oldest first: (delivered per contract, overage beyond all of them)."""
    delivered, left = [], usage
    for quantity in quantities:
        take = min(quantity, left)
        delivered.append(take)
        left -= take
    return delivered, left


@dataclass(frozen=True)
class Amounts:
    delivered: int
    unused: int
    value: Decimal
    buyer_fee: Decimal
    seller_fee: Decimal
    provider_payout: Decimal
    refund: Decimal


def contract_value(*, quantity: int, delivered: int, price: Decimal, unused_share: Decimal, buyer_escrow: Decimal) -> tuple[Decimal, Decimal]:
    """(exact value, charged value) of a contract: delivered tokens plus the frozen share of
    the unused, at the contract's price; charged half-even to the cent, never above its escrow
    (only a contract that got a cent less than its value from rounding its order's reservation
    once can reach that cap; it is logged)."""
    exact = money.notional(Decimal(delivered) + unused_share * (quantity - delivered), price)
    value = money.round_charge(exact)
    if value > buyer_escrow:
        log.warning("escrow shortfall at settlement: value %s capped at the contract's escrow %s", value, buyer_escrow)
        value = buyer_escrow
    return exact, value


def settlement_amounts(
    *,
    quantity: int,
    delivered: int,
    price: Decimal,
    unused_share: Decimal,
    buyer_fee_bps: int,
    seller_fee_bps: int,
    buyer_escrow: Decimal,
    fees: tuple[Decimal, Decimal] | None = None,
) -> Amounts:
    """The money of one contract (see the module docstring); pure.

    `fees` are the contract's (buyer, seller) fees from the running-total rule over its
    instrument; without them the contract is its own running total (its fees rounded alone).
    """
    exact, value = contract_value(
        quantity=quantity, delivered=delivered, price=price, unused_share=unused_share, buyer_escrow=buyer_escrow
    )
    if fees is None:
        line = money.FeeLine(0, 0, 0, exact, value, buyer_escrow, buyer_fee_bps, seller_fee_bps)
        fees = money.fees_running([line])[0]
    buyer_fee, seller_fee = fees
    refund = buyer_escrow - value - buyer_fee
    return Amounts(delivered, quantity - delivered, value, buyer_fee, seller_fee, value - seller_fee, refund)


@dataclass(frozen=True)
class Planned:
    """What settlement pays one contract: its allocation and its money."""

    delivered: int
    overage: int  # recorded on the newest contract of its pair
    amounts: Amounts


def instrument_settlement_plan(*, instrument_id: int) -> dict[int, Planned]:
    """Every contract of the instrument (settled or not) with what settlement pays it: usage
    allocated per pair oldest first, values, and the running-total fees over the instrument.
    A function of the instrument's final contracts and usage alone (two queries)."""
    trades = list(
        Trade.objects.filter(instrument_id=instrument_id)
        .order_by("match_sequence")
        .values_list(
            "id", "buyer_id", "seller_id", "quantity", "price", "unused_capacity_share",
            "buyer_fee_bps", "seller_fee_bps", "buyer_escrow",
        )
    )  # fmt: skip
    usage = {
        (r["buyer_id"], r["provider_id"]): r["s"] or 0
        for r in UsageEvent.objects.filter(instrument_id=instrument_id)
        .values("buyer_id", "provider_id")
        .annotate(s=Sum("billable_tokens"))
    }
    by_pair: dict[tuple[int, int], list[tuple]] = defaultdict(list)
    for t in trades:
        by_pair[(t[1], t[2])].append(t)
    alloc: dict[int, tuple[int, int]] = {}
    for pair, contracts in by_pair.items():
        delivered, overage = allocate(usage=usage.get(pair, 0), quantities=[t[3] for t in contracts])
        for i, (t, d) in enumerate(zip(contracts, delivered, strict=True)):
            alloc[t[0]] = (d, overage if i == len(contracts) - 1 else 0)
    lines = []
    for pk, buyer, seller, quantity, price, share, b_bps, s_bps, escrow in trades:
        exact, value = contract_value(
            quantity=quantity, delivered=alloc[pk][0], price=price, unused_share=share, buyer_escrow=escrow
        )
        lines.append(money.FeeLine(pk, buyer, seller, exact, value, escrow, b_bps, s_bps))
    fees = money.fees_running(lines)
    plan = {}
    for pk, _, _, quantity, price, share, b_bps, s_bps, escrow in trades:
        d, overage = alloc[pk]
        amounts = settlement_amounts(
            quantity=quantity, delivered=d, price=price, unused_share=share, buyer_fee_bps=b_bps,
            seller_fee_bps=s_bps, buyer_escrow=escrow, fees=fees[pk],
        )  # fmt: skip
        plan[pk] = Planned(d, overage, amounts)
    return plan


@dataclass
class SettleReport:
    instruments: int = 0
    contracts: int = 0
    pairs: int = 0
    delivered_tokens: int = 0
    overage_tokens: int = 0
    value: Decimal = field(default_factory=lambda: Decimal("0.00"))
    fees: Decimal = field(default_factory=lambda: Decimal("0.00"))
    refunds: Decimal = field(default_factory=lambda: Decimal("0.00"))
    not_due: list[str] = field(default_factory=list)

    def add(self, other: SettleReport) -> None:
        self.instruments += other.instruments
        self.contracts += other.contracts
        self.pairs += other.pairs
        self.delivered_tokens += other.delivered_tokens
        self.overage_tokens += other.overage_tokens
        self.value += other.value
        self.fees += other.fees
        self.refunds += other.refunds
        self.not_due += other.not_due

    def as_dict(self) -> dict:
        return {
            "instruments": self.instruments,
            "contracts": self.contracts,
            "pairs": self.pairs,
            "delivered_tokens": self.delivered_tokens,
            "overage_tokens": self.overage_tokens,
            "value": str(self.value),
            "fees": str(self.fees),
            "refunds": str(self.refunds),
        }


Progress = Callable[[str, SettleReport], None]


def settlement_due_at(instrument: Instrument) -> dt.datetime:
    return instrument.delivery_end + dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS)


def instruments_due(*, now: dt.datetime | None = None) -> list[int]:
    """Instruments past their period plus grace that still have unsettled contracts."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.SETTLEMENT_GRACE_HOURS)
    return sorted(
        set(
            Trade.objects.filter(instrument__delivery_end__lte=cutoff, settlement__isnull=True).values_list(
                "instrument_id", flat=True
            )
        )
    )


def settlements_run_due(
    *, now: dt.datetime | None = None, chunk_contracts: int = DEFAULT_CHUNK_CONTRACTS, progress: Progress | None = None
) -> SettleReport:
    """Settle every instrument that is due (what the periodic task and `manage.py settle` do)."""
    now = now or timezone.now()
    report = SettleReport()
    for instrument_id in instruments_due(now=now):
        report.add(instrument_settle(instrument_id=instrument_id, now=now, chunk_contracts=chunk_contracts, progress=progress))
    return report


def settlements_run_period(
    *,
    day: dt.date,
    now: dt.datetime | None = None,
    chunk_contracts: int = DEFAULT_CHUNK_CONTRACTS,
    progress: Progress | None = None,
) -> SettleReport:
    """Settle (or re-run) every instrument of one delivery day; settles nothing twice."""
    now = now or timezone.now()
    report = SettleReport()
    for inst in Instrument.objects.filter(delivery_date=day).select_related("tier", "region").order_by("pk"):
        if now < settlement_due_at(inst):
            report.not_due.append(f"{inst.symbol} (due {settlement_due_at(inst).isoformat()})")
            continue
        report.add(instrument_settle(instrument_id=inst.pk, now=now, chunk_contracts=chunk_contracts, progress=progress))
    return report


def instrument_settle(
    *,
    instrument_id: int,
    now: dt.datetime | None = None,
    chunk_contracts: int = DEFAULT_CHUNK_CONTRACTS,
    progress: Progress | None = None,
) -> SettleReport:
    """Settle every unsettled contract of one instrument, in chunks of whole pairs.

    Refuses (ServiceError not_due) before the period end plus grace. Closes the instrument
    first if the sweep has not (expiring live orders releases their escrow). Safe to run
    concurrently and to re-run: see the module docstring.
    """
    now = now or timezone.now()
    inst = Instrument.objects.select_related("tier", "region").filter(pk=instrument_id).first()
    if inst is None:
        raise NotFound("unknown_instrument", f"No instrument {instrument_id}.")
    if now < settlement_due_at(inst):
        raise ServiceError(
            "not_due", f"{inst.symbol} settles after {settlement_due_at(inst).isoformat()} (period end + grace).", status=409
        )
    if inst.status in (Instrument.Status.OPEN, Instrument.Status.HALTED):
        instrument_close(instrument_id=inst.pk, now=now)
    report = SettleReport(instruments=1)
    plan = instrument_settlement_plan(instrument_id=inst.pk)
    pairs = list(
        Trade.objects.filter(instrument=inst, settlement__isnull=True)
        .values_list("buyer_id", "seller_id")
        .annotate(n=Count("id"))
        .order_by("buyer_id", "seller_id")
    )
    chunk: list[tuple[int, int]] = []
    size = 0
    for buyer_id, seller_id, n in pairs:
        chunk.append((buyer_id, seller_id))
        size += n
        if size >= chunk_contracts:
            report.add(_settle_chunk(instrument=inst, first=chunk[0], last=chunk[-1], now=now, plan=plan))
            if progress:
                progress(inst.symbol, report)
            chunk, size = [], 0
    if chunk:
        report.add(_settle_chunk(instrument=inst, first=chunk[0], last=chunk[-1], now=now, plan=plan))
        if progress:
            progress(inst.symbol, report)
    if not Trade.objects.filter(instrument=inst, settlement__isnull=True).exists():
        # Settled is the instrument's last status (marketplace only closes open/halted ones).
        Instrument.objects.filter(pk=inst.pk, status=Instrument.Status.CLOSED).update(status=Instrument.Status.SETTLED)
    return report


def _pair_range(first: tuple[int, int], last: tuple[int, int], buyer: str, seller: str) -> Q:
    """(buyer, seller) between first and last inclusive, in (buyer, seller) order."""
    lower = Q(**{f"{buyer}__gt": first[0]}) | Q(**{buyer: first[0], f"{seller}__gte": first[1]})
    upper = Q(**{f"{buyer}__lt": last[0]}) | Q(**{buyer: last[0], f"{seller}__lte": last[1]})
    return lower & upper


def _lock_instrument(instrument_id: int) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", [SETTLEMENT_LOCK_NAMESPACE, instrument_id])


def _settle_chunk(
    *, instrument: Instrument, first: tuple[int, int], last: tuple[int, int], now: dt.datetime, plan: dict[int, Planned]
) -> SettleReport:
    """Settle the unsettled contracts of the pairs in [first, last], in one transaction, as
    `plan` (instrument_settlement_plan) says."""
    report = SettleReport()
    with transaction.atomic():
        _lock_instrument(instrument.pk)
        trades = list(
            Trade.objects.select_for_update()
            .filter(_pair_range(first, last, "buyer_id", "seller_id"), instrument=instrument)
            .order_by("match_sequence")
        )
        settled = set(Settlement.objects.filter(trade__in=[t.pk for t in trades]).values_list("trade_id", flat=True))
        if len(settled) == len(trades):
            return report
        if any(t.pk not in plan for t in trades):
            plan.update(instrument_settlement_plan(instrument_id=instrument.pk))
        by_pair: dict[tuple[int, int], list[Trade]] = defaultdict(list)
        for t in trades:
            by_pair[(t.buyer_id, t.seller_id)].append(t)
        accounts = {t.buyer_id for t in trades} | {t.seller_id for t in trades}
        escrow_ids = ledger_account_ids(accounts, LedgerAccount.Kind.ESCROW)
        available_ids = ledger_account_ids(accounts, LedgerAccount.Kind.AVAILABLE)
        fees_id = system_account(LedgerAccount.Kind.FEES).pk

        postings: list[Posting] = []
        rows: list[Settlement] = []
        for contracts in by_pair.values():
            if all(t.pk in settled for t in contracts):
                continue
            report.pairs += 1
            report.overage_tokens += plan[contracts[-1].pk].overage
            for t in contracts:
                if t.pk in settled:
                    continue
                planned = plan[t.pk]
                a = planned.amounts
                postings.append(
                    Posting(
                        key=f"settle:{t.pk}",
                        kind=LedgerTransaction.Kind.SETTLEMENT,
                        legs=[
                            (escrow_ids[t.buyer_id], -t.buyer_escrow),
                            (available_ids[t.buyer_id], a.refund),
                            (available_ids[t.seller_id], a.provider_payout),
                            (fees_id, a.buyer_fee + a.seller_fee),
                        ],
                        memo=(
                            f"settlement of contract #{t.pk} on {instrument.symbol}: delivered {a.delivered:,} of "
                            f"{t.quantity:,} tokens @ {price_text(t.price)}; charged {a.value + a.buyer_fee} incl. fee "
                            f"{a.buyer_fee}; refund {a.refund}; provider paid {a.provider_payout}"
                        )[:255],  # the memo column's length
                    )
                )
                rows.append(
                    Settlement(
                        trade=t,
                        delivered_tokens=a.delivered,
                        unused_tokens=a.unused,
                        value=a.value,
                        buyer_fee=a.buyer_fee,
                        seller_fee=a.seller_fee,
                        provider_payout=a.provider_payout,
                        refund=a.refund,
                        overage_tokens=planned.overage,
                        settled_at=now,
                    )
                )
                report.contracts += 1
                report.delivered_tokens += a.delivered
                report.value += a.value
                report.fees += a.buyer_fee + a.seller_fee
                report.refunds += a.refund
        txns = ledger_post_many(postings=postings)
        for row, txn in zip(rows, txns, strict=True):
            row.transaction = txn
        _insert_settlements(rows)
    return report


_SETTLEMENT_FIELDS = (
    "trade_id", "delivered_tokens", "unused_tokens", "value", "buyer_fee", "seller_fee", "provider_payout", "refund",
    "overage_tokens", "transaction_id", "settled_at",
)  # fmt: skip
_SETTLEMENT_TYPES = ("bigint", "bigint", "bigint", "numeric", "numeric", "numeric", "numeric", "numeric", "bigint", "bigint", "timestamptz")


def _insert_settlements(rows: list[Settlement]) -> None:
    """One INSERT ... SELECT FROM unnest() on PostgreSQL (bulk_create elsewhere)."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        Settlement.objects.bulk_create(rows, batch_size=2000)
        return
    columns = ", ".join(_SETTLEMENT_FIELDS)
    arrays = ", ".join(f"%s::{t}[]" for t in _SETTLEMENT_TYPES)
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO metering_settlement ({columns}) SELECT * FROM unnest({arrays})",
            [[getattr(r, f) for r in rows] for f in _SETTLEMENT_FIELDS],
        )
