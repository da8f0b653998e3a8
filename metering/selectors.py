"""Reads of the money side: balances, statements, contracts with their delivery so far."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from marketplace.models import Account, Trade

from .ledger import currency
from .models import LedgerAccount, LedgerEntry, UsageEvent
from .settlement import allocate


def balances_get(*, account: Account) -> dict[str, Decimal]:
    """available, escrow and owed of `account` in the settlement currency."""
    out = {k: Decimal("0.00") for k in ("available", "escrow", "owed")}
    for kind, balance in LedgerAccount.objects.filter(
        owner=account, currency=currency(), kind__in=list(out)
    ).values_list("kind", "balance"):
        out[kind] = balance
    return out


def balances_by_currency(*, account: Account) -> list[dict]:
    """One row per currency the account holds: {currency, available, escrow, owed, pending_withdrawal}."""
    names = {"available": "available", "escrow": "escrow", "owed": "owed", "withdrawal_hold": "pending_withdrawal"}

    def empty(cur: str) -> dict:
        return {"currency": cur, **{name: Decimal("0.00") for name in names.values()}}

    rows: dict[str, dict] = {}
    for cur, kind, balance in LedgerAccount.objects.filter(owner=account).values_list("currency", "kind", "balance"):
        rows.setdefault(cur, empty(cur))[names[kind]] = balance
    if not rows:
        rows[currency()] = empty(currency())
    return [rows[c] for c in sorted(rows)]


def ledger_entries_for_account(
    *,
    account: Account,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    kinds: Iterable[str] = (),
    ledger_kinds: Iterable[str] = (),
) -> QuerySet[LedgerEntry]:
    """The account's own entries (newest first by id), each with its running balance_after."""
    qs = LedgerEntry.objects.filter(account__owner=account).select_related("transaction", "account")
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    kinds = list(kinds)
    if kinds:
        qs = qs.filter(transaction__kind__in=kinds)
    ledger_kinds = list(ledger_kinds)
    if ledger_kinds:
        qs = qs.filter(account__kind__in=ledger_kinds)
    return qs


def contracts_for_account(*, account: Account, role: str | None = None) -> QuerySet[Trade]:
    """Contracts (trades) where `account` is the buyer or the provider."""
    if role == "buyer":
        q = Q(buyer=account)
    elif role == "provider":
        q = Q(seller=account)
    else:
        q = Q(buyer=account) | Q(seller=account)
    return Trade.objects.filter(q).select_related(
        "instrument__tier", "instrument__region", "hardware", "buyer", "seller", "settlement"
    )


def contract_status(*, trade: Trade, now: dt.datetime | None = None) -> str:
    """settled once its Settlement exists; delivering from its delivery start; open before."""
    now = now or timezone.now()
    if getattr(trade, "settlement", None) is not None:
        return "settled"
    if now >= max(trade.instrument.delivery_start, trade.executed_at):
        return "delivering"
    return "open"


def contracts_delivered(*, trades: Iterable[Trade]) -> dict[int, int]:
    """Tokens delivered so far on each contract: its pair's usage allocated oldest first.

    Settled contracts report what their settlement recorded. Two queries for any number of
    contracts: the other contracts of the same pairs, and the pairs' usage sums.
    """
    trades = list(trades)
    out: dict[int, int] = {}
    pending = []
    for t in trades:
        s = getattr(t, "settlement", None)
        if s is not None:
            out[t.pk] = s.delivered_tokens
        else:
            pending.append(t)
    if not pending:
        return out
    pairs = {(t.instrument_id, t.buyer_id, t.seller_id) for t in pending}
    pair_q = Q()
    usage_q = Q()
    for inst, buyer, seller in pairs:
        pair_q |= Q(instrument_id=inst, buyer_id=buyer, seller_id=seller)
        usage_q |= Q(instrument_id=inst, buyer_id=buyer, provider_id=seller)
    siblings: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for pk, inst, buyer, seller, qty in (
        Trade.objects.filter(pair_q).order_by("match_sequence").values_list("id", "instrument_id", "buyer_id", "seller_id", "quantity")
    ):
        siblings[(inst, buyer, seller)].append((pk, qty))
    usage = {
        (r["instrument_id"], r["buyer_id"], r["provider_id"]): r["s"]
        for r in UsageEvent.objects.filter(usage_q).values("instrument_id", "buyer_id", "provider_id").annotate(s=Sum("billable_tokens"))
    }
    for pair, contracts in siblings.items():
        delivered, _ = allocate(usage=usage.get(pair) or 0, quantities=[q for _, q in contracts])
        for (pk, _), d in zip(contracts, delivered, strict=True):
            out.setdefault(pk, d)
    return out
