"""Settlement reports and reconciliation for operators (admin page and `settlement_report`).

Reads only. Every figure is computed by the database with GROUP BY aggregation, so producing a
report takes a fixed number of queries however many contracts it covers:
- the report: one query grouped by (delivery day, group), rolled up per group, per day (the
  chart) and in total, and one small query for the groups' labels;
- the reconciliation: a handful of queries (entries per ledger account for the trial balance
  and balances, per-transaction sums, escrow splits, usage against settlement per pair),
  each listing at most `BREAK_LIMIT` breaks and counting all of them.

"Day" is the delivery day of the contract's instrument (the delivery period), the natural
period of a settlement report: a contract delivered on the 3rd and settled after midnight
still belongs to the 3rd. Only settled contracts are reported (a Settlement row exists).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal

import tablib
from django.db import connection, transaction
from django.db.models import Count, DecimalField, ExpressionWrapper, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Round

from marketplace.models import Account, Instrument, Region, Tier
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction, Settlement, UsageEvent

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


# The column a grouping aggregates by, on Settlement. Only the key is grouped on (an integer
# or a date, so PostgreSQL can hash-aggregate); labels are read after, from the small tables.
_GROUP_KEYS: dict[str, str] = {
    GroupBy.DAY: "trade__instrument__delivery_date",
    GroupBy.PROVIDER: "trade__seller_id",
    GroupBy.BUYER: "trade__buyer_id",
    GroupBy.TIER: "trade__instrument__tier_id",
    GroupBy.REGION: "trade__instrument__region_id",
}


def _group_labels(group_by: str, keys: Iterable) -> dict:
    """key -> (sort key, label) of a grouping's rows (one small query, none for days)."""
    keys = list(keys)
    if group_by == GroupBy.DAY:
        return {k: (k, k.isoformat()) for k in keys}
    if group_by in (GroupBy.PROVIDER, GroupBy.BUYER):
        rows = Account.objects.filter(pk__in=keys).values_list("pk", "slug")
        return {pk: (slug, slug) for pk, slug in rows}
    if group_by == GroupBy.TIER:
        rows = Tier.objects.filter(pk__in=keys).values_list("pk", "sort_order", "code")
        return {pk: ((order, code), code) for pk, order, code in rows}
    rows = Region.objects.filter(pk__in=keys).values_list("pk", "code")
    return {pk: (code, code) for pk, code in rows}


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
    """An amount in whole cents, for exact sums and comparisons of money in SQL.

    PostgreSQL's NUMERIC is exact, so this is just x 100. SQLite keeps decimals as binary
    floats (0.1 + 0.2 != 0.3), so there each amount is rounded to whole cents before it is
    summed or compared, and sums of whole numbers stay exact.
    """
    if connection.vendor == "postgresql":
        return ExpressionWrapper(expr * 100, output_field=_CENTS)
    return Round(expr * 100, output_field=_CENTS)


def cents_sum(expr) -> Coalesce:
    return Coalesce(Sum(cents(expr)), Value(0), output_field=_CENTS)


def _money(value) -> Decimal:
    """Cents (integral; a float-ish Decimal from SQLite) -> money at 2 places."""
    return (Decimal(value or 0).quantize(Decimal(1)) / 100).quantize(Decimal("0.01"))


def _aggregates() -> dict:
    return {
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


def _grouped(*, filters: ReportFilters, group_by: str) -> tuple[list[ReportRow], list[ReportRow]]:
    """Rows per group and per delivery day, from ONE grouped query by (day, group key).

    The database sums the contracts of each (day, group) cell; the cells (at most days x
    groups) are then added up per group and per day here. Sums add exactly, so this is the
    same as grouping twice, at the cost of one scan of the contracts instead of three.
    Then one small query reads the groups' labels.
    """
    if group_by not in _GROUP_KEYS:
        raise ValueError(f"group_by must be one of {', '.join(GroupBy.VALUES)}")
    key, day_key = _GROUP_KEYS[group_by], _GROUP_KEYS[GroupBy.DAY]
    cells = settlements_filtered(filters=filters).order_by().values(*dict.fromkeys([day_key, key]))
    by_key: dict = {}
    by_day: dict = {}
    for d in cells.annotate(**_aggregates()):
        cell = _row("", d[key], d)
        by_key[d[key]] = by_key[d[key]] + cell if d[key] in by_key else cell
        by_day[d[day_key]] = by_day[d[day_key]] + cell if d[day_key] in by_day else replace(cell)
    labels = _group_labels(group_by, by_key)
    rows = []
    for k in sorted(by_key, key=lambda k: labels[k][0]):
        row = by_key[k]
        row.key, row.key_id = labels[k][1], k
        rows.append(row)
    days = []
    for day in sorted(by_day):
        row = by_day[day]
        row.key, row.key_id = day.isoformat(), day
        days.append(row)
    return rows, days


def settlement_report_rows(*, filters: ReportFilters, group_by: str) -> list[ReportRow]:
    """A row per group, in the group's natural order: days ascending, accounts and regions by
    slug/code, tiers by their sort order."""
    return _grouped(filters=filters, group_by=group_by)[0]


def settlement_report_get(*, filters: ReportFilters, group_by: str = GroupBy.DAY) -> SettlementReport:
    """The report: grouped rows, a totals row and the per-day series for the chart, from one
    grouped query (plus one for the labels), whatever the number of contracts."""
    rows, days = _grouped(filters=filters, group_by=group_by)
    daily = [DayPoint(day=r.key_id, gross_value=r.gross_value, fees=r.fees) for r in days]
    return SettlementReport(group_by=group_by, filters=filters, rows=rows, totals=report_totals(rows), daily=daily)


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


@contextmanager
def _reporting_memory():
    """A transaction whose sorts and hashes may use more memory than a web request's default
    (PostgreSQL work_mem, SET LOCAL: only these report queries), so grouping a million usage
    events by pair hashes in memory instead of spilling to disk."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute("SET LOCAL work_mem = '128MB'")
        yield


def _ledger_checks(*, limit: int) -> tuple[list[CurrencyBalance], Breaks]:
    """Trial balance per currency and ledger accounts whose balance is not their entries' sum.

    One grouped query over the entries (by ledger account: a few rows per participant) and
    one over the ledger accounts; the per-currency totals are added up from those rows.
    """
    entries = dict(
        LedgerEntry.objects.order_by()
        .values("account_id")
        .annotate(s=cents_sum(F("amount")))
        .values_list("account_id", "s")
    )
    entries_total: dict[str, Decimal] = {}
    balances_total: dict[str, Decimal] = {}
    mismatches = Breaks()
    accounts = (
        LedgerAccount.objects.order_by("pk")
        .annotate(balance_cents=cents(F("balance")))
        .values_list("pk", "currency", "kind", "owner__slug", "balance", "balance_cents")
    )
    for pk, cur, kind, owner, balance, balance_cents in accounts:
        in_entries = _money(entries.get(pk))
        entries_total[cur] = entries_total.get(cur, ZERO) + in_entries
        balances_total[cur] = balances_total.get(cur, ZERO) + _money(balance_cents)
        if _money(balance_cents) != in_entries:
            mismatches.count += 1
            if len(mismatches.items) < limit:
                mismatches.items.append(BalanceMismatch(pk, f"{owner or 'system'}:{kind}:{cur}", balance, in_entries))
    currencies = [
        CurrencyBalance(currency=cur, entries_total=entries_total[cur], balances_total=balances_total[cur])
        for cur in sorted(entries_total)
    ]
    return currencies, mismatches


def trial_balance() -> list[CurrencyBalance]:
    """Per currency: the sum of all entries and of all stored balances; both must be zero."""
    return _ledger_checks(limit=0)[0]


def reconciliation_get(*, filters: ReportFilters | None = None, limit: int = BREAK_LIMIT) -> Reconciliation:
    """Check the books. The ledger checks are global (the ledger is not per period); the
    contract and usage checks cover the contracts the report filters select."""
    filters = filters or ReportFilters()
    with _reporting_memory():
        currencies, mismatches = _ledger_checks(limit=limit)

        # Grouped by the transaction id alone (an integer); keys are read for the listed few.
        unbalanced_qs = (
            LedgerEntry.objects.order_by()
            .values("transaction_id")
            .annotate(total=cents_sum(F("amount")))
            .exclude(total=0)
            .order_by("transaction_id")
        )
        items, count = _limited(unbalanced_qs, limit)
        keys = dict(
            LedgerTransaction.objects.filter(pk__in=[r["transaction_id"] for r in items]).values_list("pk", "key")
        )
        unbalanced = Breaks(
            [
                UnbalancedTransaction(r["transaction_id"], keys.get(r["transaction_id"], ""), _money(r["total"]))
                for r in items
            ],
            count,
        )

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
        usage = usage_breaks_get(filters=filters, limit=limit)

    return Reconciliation(
        currencies=currencies,
        unbalanced_transactions=unbalanced,
        balance_mismatches=mismatches,
        escrow_breaks=escrow,
        usage_breaks=usage,
    )


def usage_breaks_get(*, filters: ReportFilters, limit: int = BREAK_LIMIT) -> Breaks:
    """Buyer-provider pairs per instrument whose counted usage differs from settled + overage.

    Only pairs with at least one settled contract are checked (the others are not settled
    yet). Usage is summed per (instrument, provider, buyer) in one pass (a hash aggregate
    PostgreSQL can run in parallel), settlements likewise, and the two are joined on the
    pair: no correlated subquery per pair.
    """
    usage = UsageEvent.objects.filter(filters.instrument_q("instrument__"))
    settled = settlements_filtered(filters=filters)
    if filters.provider_id:
        usage = usage.filter(provider_id=filters.provider_id)
    if filters.buyer_id:
        usage = usage.filter(buyer_id=filters.buyer_id)
    usage_sql, usage_params = (
        usage.order_by()
        .values(c1=F("instrument_id"), c2=F("provider_id"), c3=F("buyer_id"))
        .annotate(counted=Sum("billable_tokens"))
        .query.sql_with_params()
    )
    settled_sql, settled_params = (
        settled.order_by()
        .values(c1=F("trade__instrument_id"), c2=F("trade__seller_id"), c3=F("trade__buyer_id"))
        .annotate(delivered=Sum("delivered_tokens"), overage=Sum("overage_tokens"))
        .query.sql_with_params()
    )
    # MATERIALIZED: each side is aggregated on its own (a hash aggregate over a sequential
    # scan) and then hash-joined, rather than walking the usage index in pair order.
    sql = f"""
        WITH s AS MATERIALIZED ({settled_sql}), u AS MATERIALIZED ({usage_sql})
        SELECT s.c1, s.c2, s.c3, COALESCE(u.counted, 0), s.delivered, s.overage, COUNT(*) OVER ()
        FROM s
        LEFT JOIN u ON u.c1 = s.c1 AND u.c2 = s.c2 AND u.c3 = s.c3
        WHERE COALESCE(u.counted, 0) <> s.delivered + s.overage
        ORDER BY s.c1, s.c2, s.c3
        LIMIT {int(limit)}
    """
    with connection.cursor() as cur:
        cur.execute(sql, [*settled_params, *usage_params])
        raw = cur.fetchall()
    if not raw:
        return Breaks()
    instruments = {
        i.pk: i.symbol for i in Instrument.objects.select_related("tier", "region").filter(pk__in={r[0] for r in raw})
    }
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
