"""Settlement reports and reconciliation for operators (admin page and `settlement_report`).

Reads only. Every figure is computed by the database with GROUP BY aggregation, so producing a
report takes a fixed number of queries however many contracts it covers:
- the report: one grouped query, one totals query, one per-day query for the chart;
- the reconciliation: a handful of queries (trial balance, per-transaction sums, balances
  against entries, escrow splits, usage against settlement), each listing at most
  `BREAK_LIMIT` breaks and counting all of them.

"Day" is the delivery day of the contract's instrument (the delivery period), the natural
period of a settlement report: a contract delivered on the 3rd and settled after midnight
still belongs to the 3rd. Only settled contracts are reported (a Settlement row exists).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

import tablib
from django.db import connection
from django.db.models import Count, DecimalField, F, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, Round

from marketplace.models import Instrument
from metering.models import LedgerAccount, LedgerEntry, Settlement, UsageEvent

ZERO = Decimal("0.00")
RATIO_PLACES = Decimal("0.0001")
BREAK_LIMIT = 100


class GroupBy:
    DAY = "day"
    PROVIDER = "provider"
    BUYER = "buyer"
    TIER = "tier"
    REGION = "region"

    CHOICES = [(DAY, "Day"), (PROVIDER, "Provider"), (BUYER, "Buyer"), (TIER, "Tier"), (REGION, "Region")]
    VALUES = tuple(c for c, _ in CHOICES)


# group -> (id column, label column, ordering) on Settlement
_GROUP_COLUMNS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    GroupBy.DAY: (
        "trade__instrument__delivery_date",
        "trade__instrument__delivery_date",
        ("trade__instrument__delivery_date",),
    ),
    GroupBy.PROVIDER: ("trade__seller_id", "trade__seller__slug", ("trade__seller__slug",)),
    GroupBy.BUYER: ("trade__buyer_id", "trade__buyer__slug", ("trade__buyer__slug",)),
    GroupBy.TIER: (
        "trade__instrument__tier_id",
        "trade__instrument__tier__code",
        ("trade__instrument__tier__sort_order", "trade__instrument__tier__code"),
    ),
    GroupBy.REGION: (
        "trade__instrument__region_id",
        "trade__instrument__region__code",
        ("trade__instrument__region__code",),
    ),
}


@dataclass(frozen=True)
class ReportFilters:
    """Which settled contracts a report covers; dates are delivery days, both inclusive."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    provider_id: int | None = None
    buyer_id: int | None = None
    tier_id: int | None = None
    region_id: int | None = None
    instrument_id: int | None = None
    # A chunk of instruments (the management command walks the range in chunks).
    instrument_ids: tuple[int, ...] | None = None

    def instrument_q(self, prefix: str) -> Q:
        """The filters as a Q over a model reaching Instrument through `prefix`."""
        q = Q()
        if self.date_from:
            q &= Q(**{f"{prefix}delivery_date__gte": self.date_from})
        if self.date_to:
            q &= Q(**{f"{prefix}delivery_date__lte": self.date_to})
        if self.tier_id:
            q &= Q(**{f"{prefix}tier_id": self.tier_id})
        if self.region_id:
            q &= Q(**{f"{prefix}region_id": self.region_id})
        if self.instrument_id:
            q &= Q(**{f"{prefix}id": self.instrument_id})
        if self.instrument_ids is not None:
            q &= Q(**{f"{prefix}id__in": self.instrument_ids})
        return q


@dataclass
class ReportRow:
    """Sums over a group of settled contracts; adding two rows adds their sums."""

    key: str
    key_id: int | str | None = None
    contracts: int = 0
    tokens_traded: int = 0
    tokens_delivered: int = 0
    gross_value: Decimal = ZERO
    fees: Decimal = ZERO
    refunds: Decimal = ZERO
    provider_payout: Decimal = ZERO
    overage_tokens: int = 0

    @property
    def delivery_ratio(self) -> Decimal:
        """Tokens delivered / tokens traded, to 4 places (0 when nothing traded)."""
        if not self.tokens_traded:
            return Decimal("0.0000")
        return (Decimal(self.tokens_delivered) / Decimal(self.tokens_traded)).quantize(
            RATIO_PLACES, rounding=ROUND_HALF_EVEN
        )

    def __add__(self, other: ReportRow) -> ReportRow:
        return ReportRow(
            key=self.key,
            key_id=self.key_id,
            contracts=self.contracts + other.contracts,
            tokens_traded=self.tokens_traded + other.tokens_traded,
            tokens_delivered=self.tokens_delivered + other.tokens_delivered,
            gross_value=self.gross_value + other.gross_value,
            fees=self.fees + other.fees,
            refunds=self.refunds + other.refunds,
            provider_payout=self.provider_payout + other.provider_payout,
            overage_tokens=self.overage_tokens + other.overage_tokens,
        )


@dataclass
class DayPoint:
    day: dt.date
    gross_value: Decimal
    fees: Decimal


@dataclass
class SettlementReport:
    group_by: str
    filters: ReportFilters
    rows: list[ReportRow]
    totals: ReportRow
    daily: list[DayPoint]


_CENTS = DecimalField(max_digits=30, decimal_places=0)


def cents(expr) -> Round:
    """An amount in whole cents. SQLite keeps decimals as binary floats, so sums and
    comparisons of amounts are made on rounded cents there; on PostgreSQL (exact NUMERIC)
    this changes nothing."""
    return Round(expr * 100, output_field=_CENTS)


def cents_sum(expr) -> Coalesce:
    return Coalesce(Sum(cents(expr)), Value(0), output_field=_CENTS)


def _money(value) -> Decimal:
    """Cents (an integral number, possibly as a float-ish Decimal from SQLite) -> money."""
    return (Decimal(value or 0).quantize(Decimal(1)) / 100).quantize(Decimal("0.01"))


_AGGREGATES = {
    "contracts": Count("pk"),
    "tokens_traded": Coalesce(Sum("trade__quantity"), 0),
    "tokens_delivered": Coalesce(Sum("delivered_tokens"), 0),
    "gross_value": cents_sum(F("value")),
    "fees": cents_sum(F("buyer_fee") + F("seller_fee")),
    "refunds": cents_sum(F("refund")),
    "provider_payout": cents_sum(F("provider_payout")),
    "overage_tokens": Coalesce(Sum("overage_tokens"), 0),
}


def _row(key: str, key_id, data: dict) -> ReportRow:
    return ReportRow(
        key=key,
        key_id=key_id,
        contracts=int(data["contracts"] or 0),
        tokens_traded=int(data["tokens_traded"] or 0),
        tokens_delivered=int(data["tokens_delivered"] or 0),
        gross_value=_money(data["gross_value"]),
        fees=_money(data["fees"]),
        refunds=_money(data["refunds"]),
        provider_payout=_money(data["provider_payout"]),
        overage_tokens=int(data["overage_tokens"] or 0),
    )


def settlements_filtered(*, filters: ReportFilters) -> QuerySet[Settlement]:
    qs = Settlement.objects.filter(filters.instrument_q("trade__instrument__"))
    if filters.provider_id:
        qs = qs.filter(trade__seller_id=filters.provider_id)
    if filters.buyer_id:
        qs = qs.filter(trade__buyer_id=filters.buyer_id)
    return qs


def settlement_report_rows(*, filters: ReportFilters, group_by: str) -> list[ReportRow]:
    """One grouped query: a row per group, ordered by the group's natural order."""
    if group_by not in _GROUP_COLUMNS:
        raise ValueError(f"group_by must be one of {', '.join(GroupBy.VALUES)}")
    id_col, label_col, ordering = _GROUP_COLUMNS[group_by]
    columns = dict.fromkeys([id_col, label_col, *ordering])
    qs = settlements_filtered(filters=filters).order_by().values(*columns).annotate(**_AGGREGATES).order_by(*ordering)
    rows = []
    for data in qs:
        label = data[label_col]
        rows.append(_row(label.isoformat() if isinstance(label, dt.date) else str(label), data[id_col], data))
    return rows


def settlement_report_get(*, filters: ReportFilters, group_by: str = GroupBy.DAY) -> SettlementReport:
    """The report: grouped rows, a totals row and the per-day series for the chart (3 queries)."""
    rows = settlement_report_rows(filters=filters, group_by=group_by)
    totals = _row("Total", None, settlements_filtered(filters=filters).aggregate(**_AGGREGATES))
    by_day = rows if group_by == GroupBy.DAY else settlement_report_rows(filters=filters, group_by=GroupBy.DAY)
    daily = [DayPoint(day=dt.date.fromisoformat(r.key), gross_value=r.gross_value, fees=r.fees) for r in by_day]
    return SettlementReport(group_by=group_by, filters=filters, rows=rows, totals=totals, daily=daily)


def report_rows_merge(parts: Iterable[list[ReportRow]]) -> list[ReportRow]:
    """Add up rows of the same group from several partial reports (e.g. one per day range)."""
    merged: dict[str, ReportRow] = {}
    for rows in parts:
        for row in rows:
            merged[row.key] = merged[row.key] + row if row.key in merged else row
    return list(merged.values())


def report_totals(rows: Iterable[ReportRow]) -> ReportRow:
    total = ReportRow(key="Total")
    for row in rows:
        total = total + row
    total.key, total.key_id = "Total", None
    return total


EXPORT_HEADERS = [
    "contracts",
    "tokens_traded",
    "tokens_delivered",
    "delivery_ratio",
    "gross_value",
    "fees",
    "refunds_to_buyers",
    "provider_payout",
    "overage_tokens",
]


def report_row_values(row: ReportRow) -> list:
    return [
        row.contracts,
        row.tokens_traded,
        row.tokens_delivered,
        row.delivery_ratio,
        row.gross_value,
        row.fees,
        row.refunds,
        row.provider_payout,
        row.overage_tokens,
    ]


def settlement_report_dataset(*, group_by: str, rows: list[ReportRow], totals: ReportRow) -> tablib.Dataset:
    """The report as a tablib Dataset (CSV, XLSX...), with the totals as the last row."""
    data = tablib.Dataset(headers=[group_by, *EXPORT_HEADERS], title="settlements")
    for row in [*rows, totals]:
        data.append([row.key, *report_row_values(row)])
    return data


# --- reconciliation -----------------------------------------------------------------------


@dataclass
class CurrencyBalance:
    currency: str
    entries_total: Decimal
    balances_total: Decimal

    @property
    def ok(self) -> bool:
        return self.entries_total == 0 and self.balances_total == 0


@dataclass
class Breaks:
    """At most BREAK_LIMIT listed items of one kind, and how many there are in all."""

    items: list = field(default_factory=list)
    count: int = 0


@dataclass
class UnbalancedTransaction:
    transaction_id: int
    key: str
    total: Decimal


@dataclass
class BalanceMismatch:
    ledger_account_id: int
    label: str
    balance: Decimal
    entries_total: Decimal


@dataclass
class EscrowBreak:
    trade_id: int
    escrow: Decimal
    provider_payout: Decimal
    fees: Decimal
    refund: Decimal

    @property
    def difference(self) -> Decimal:
        return self.escrow - (self.provider_payout + self.fees + self.refund)


@dataclass
class UsageBreak:
    instrument_id: int
    symbol: str
    provider_id: int
    provider: str
    buyer_id: int
    buyer: str
    counted: int
    settled: int
    overage: int

    @property
    def difference(self) -> int:
        return self.counted - (self.settled + self.overage)


@dataclass
class Reconciliation:
    currencies: list[CurrencyBalance]
    unbalanced_transactions: Breaks
    balance_mismatches: Breaks
    escrow_breaks: Breaks
    usage_breaks: Breaks

    @property
    def ok(self) -> bool:
        return (
            all(c.ok for c in self.currencies)
            and not self.unbalanced_transactions.count
            and not self.balance_mismatches.count
            and not self.escrow_breaks.count
            and not self.usage_breaks.count
        )


def _limited(qs, limit: int) -> tuple[list, int]:
    """The first `limit` rows and the total count, in one query when the page is not full."""
    items = list(qs[: limit + 1])
    if len(items) <= limit:
        return items, len(items)
    return items[:limit], qs.count()


def trial_balance(*, currency: str | None = None) -> list[CurrencyBalance]:
    """Per currency: the sum of all entries and of all cached balances; both must be zero."""
    entries = dict(
        LedgerEntry.objects.order_by()
        .values("account__currency")
        .annotate(s=cents_sum(F("amount")))
        .values_list("account__currency", "s")
    )
    balances = dict(
        LedgerAccount.objects.order_by()
        .values("currency")
        .annotate(s=cents_sum(F("balance")))
        .values_list("currency", "s")
    )
    out = []
    for cur in sorted(set(entries) | set(balances)):
        if currency and cur != currency:
            continue
        out.append(
            CurrencyBalance(
                currency=cur, entries_total=_money(entries.get(cur)), balances_total=_money(balances.get(cur))
            )
        )
    return out


def reconciliation_get(*, filters: ReportFilters | None = None, limit: int = BREAK_LIMIT) -> Reconciliation:
    """Check the books. The ledger checks are global (the ledger is not per period); the
    contract and usage checks cover the contracts the report filters select."""
    filters = filters or ReportFilters()

    unbalanced_qs = (
        LedgerEntry.objects.order_by()
        .values("transaction_id", "transaction__key")
        .annotate(total=cents_sum(F("amount")))
        .exclude(total=0)
        .order_by("transaction_id")
    )
    items, count = _limited(unbalanced_qs, limit)
    unbalanced = Breaks(
        [UnbalancedTransaction(r["transaction_id"], r["transaction__key"], _money(r["total"])) for r in items], count
    )

    entries_sum = (
        LedgerEntry.objects.filter(account_id=OuterRef("pk"))
        .order_by()
        .values("account_id")
        .annotate(s=cents_sum(F("amount")))
        .values("s")
    )
    mismatch_qs = (
        LedgerAccount.objects.annotate(
            entries_total=Coalesce(Subquery(entries_sum), Value(0), output_field=_CENTS),
            balance_cents=cents(F("balance")),
        )
        .exclude(balance_cents=F("entries_total"))
        .select_related("owner")
        .order_by("pk")
    )
    items, count = _limited(mismatch_qs, limit)
    mismatches = Breaks([BalanceMismatch(la.pk, str(la), la.balance, _money(la.entries_total)) for la in items], count)

    escrow_qs = (
        settlements_filtered(filters=filters)
        .annotate(
            difference=cents(
                F("trade__buyer_escrow") - F("provider_payout") - F("buyer_fee") - F("seller_fee") - F("refund")
            )
        )
        .exclude(difference=0)
        .values("trade_id", "trade__buyer_escrow", "provider_payout", "buyer_fee", "seller_fee", "refund")
        .order_by("trade_id")
    )
    items, count = _limited(escrow_qs, limit)
    escrow = Breaks(
        [
            EscrowBreak(
                trade_id=r["trade_id"],
                escrow=r["trade__buyer_escrow"],
                provider_payout=r["provider_payout"],
                fees=r["buyer_fee"] + r["seller_fee"],
                refund=r["refund"],
            )
            for r in items
        ],
        count,
    )

    return Reconciliation(
        currencies=trial_balance(),
        unbalanced_transactions=unbalanced,
        balance_mismatches=mismatches,
        escrow_breaks=escrow,
        usage_breaks=usage_breaks_get(filters=filters, limit=limit),
    )


def usage_breaks_get(*, filters: ReportFilters, limit: int = BREAK_LIMIT) -> Breaks:
    """Buyer-provider pairs per instrument whose counted usage differs from settled + overage.

    Only pairs with at least one settled contract are checked (the others are not settled
    yet). Usage and settlements are stacked with UNION ALL and grouped once, which is a
    single pass over each table, instead of a correlated subquery per pair.
    """
    usage = UsageEvent.objects.filter(filters.instrument_q("instrument__"))
    settled = settlements_filtered(filters=filters)
    if filters.provider_id:
        usage = usage.filter(provider_id=filters.provider_id)
    if filters.buyer_id:
        usage = usage.filter(buyer_id=filters.buyer_id)
    usage_sql, usage_params = (
        usage.order_by()
        .values(c1=F("instrument_id"), c2=F("provider_id"), c3=F("buyer_id"), c4=F("billable_tokens"))
        .query.sql_with_params()
    )
    settled_sql, settled_params = (
        settled.order_by()
        .values(
            c1=F("trade__instrument_id"),
            c2=F("trade__seller_id"),
            c3=F("trade__buyer_id"),
            c4=F("delivered_tokens"),
            c5=F("overage_tokens"),
        )
        .query.sql_with_params()
    )
    sql = f"""
        SELECT k.instrument_id, k.provider_id, k.buyer_id,
               SUM(k.counted), SUM(k.delivered), SUM(k.overage), COUNT(*) OVER ()
        FROM (
            SELECT u.c1 AS instrument_id, u.c2 AS provider_id, u.c3 AS buyer_id,
                   u.c4 AS counted, 0 AS delivered, 0 AS overage, 0 AS contracts
            FROM ({usage_sql}) AS u
            UNION ALL
            SELECT s.c1, s.c2, s.c3, 0, s.c4, s.c5, 1
            FROM ({settled_sql}) AS s
        ) AS k
        GROUP BY k.instrument_id, k.provider_id, k.buyer_id
        HAVING SUM(k.contracts) > 0 AND SUM(k.counted) <> SUM(k.delivered) + SUM(k.overage)
        ORDER BY k.instrument_id, k.provider_id, k.buyer_id
        LIMIT {int(limit)}
    """
    with connection.cursor() as cur:
        cur.execute(sql, [*usage_params, *settled_params])
        raw = cur.fetchall()
    if not raw:
        return Breaks()
    instruments = {
        i.pk: i.symbol for i in Instrument.objects.select_related("tier", "region").filter(pk__in={r[0] for r in raw})
    }
    from marketplace.models import Account

    slugs = dict(Account.objects.filter(pk__in={r[1] for r in raw} | {r[2] for r in raw}).values_list("pk", "slug"))
    items = [
        UsageBreak(
            instrument_id=r[0],
            symbol=instruments.get(r[0], str(r[0])),
            provider_id=r[1],
            provider=slugs.get(r[1], str(r[1])),
            buyer_id=r[2],
            buyer=slugs.get(r[2], str(r[2])),
            counted=int(r[3] or 0),
            settled=int(r[4] or 0),
            overage=int(r[5] or 0),
        )
        for r in raw
    ]
    return Breaks(items, int(raw[0][6]))
