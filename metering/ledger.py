"""Posting to the double-entry ledger: the only code that writes LedgerEntry or balances.

Lock order, everywhere in the exchange: instrument-level locks first, ledger accounts last and
in ascending id order. Keeping that order is what makes concurrent matching, placement and
settlement deadlock-free.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from marketplace.models import Account

from .models import LedgerAccount, LedgerEntry, LedgerTransaction

Kind = LedgerAccount.Kind
PARTICIPANT_KINDS = (Kind.AVAILABLE, Kind.ESCROW, Kind.OWED)


class LedgerError(Exception):
    pass


class UnbalancedTransaction(LedgerError):
    pass


class InsufficientFunds(LedgerError):
    def __init__(self, message: str = "insufficient available funds") -> None:
        super().__init__(message)


class AlreadyPosted(LedgerError):
    """A transaction with this idempotency key exists: the cause was already booked."""

    def __init__(self, existing: LedgerTransaction) -> None:
        super().__init__(f"ledger transaction {existing.key} already posted")
        self.existing = existing


def currency() -> str:
    return settings.EXCHANGE_CURRENCY


def ledger_accounts_ensure(*, account: Account) -> dict[str, LedgerAccount]:
    """The participant's available, escrow and owed accounts, created on first use."""
    cur = currency()
    found = {la.kind: la for la in LedgerAccount.objects.filter(owner=account, currency=cur)}
    missing = [k for k in PARTICIPANT_KINDS if k not in found]
    if missing:
        LedgerAccount.objects.bulk_create(
            [LedgerAccount(owner=account, kind=k, currency=cur, is_system=False) for k in missing],
            ignore_conflicts=True,
        )
        found = {la.kind: la for la in LedgerAccount.objects.filter(owner=account, currency=cur)}
    return found


def system_account(kind: str) -> LedgerAccount:
    if kind not in LedgerAccount.SYSTEM_KINDS:
        raise LedgerError(f"{kind!r} is not a system ledger account")
    acct, _ = LedgerAccount.objects.get_or_create(
        owner=None, kind=kind, currency=currency(), defaults={"is_system": True}
    )
    return acct


def ledger_account_ids(account_ids: Iterable[int], kind: str) -> dict[int, int]:
    """Map participant Account id -> id of its ledger account of `kind` (created if missing)."""
    ids = set(account_ids)
    cur = currency()
    rows = dict(
        LedgerAccount.objects.filter(owner_id__in=ids, kind=kind, currency=cur).values_list("owner_id", "id")
    )
    missing = ids - rows.keys()
    if missing:
        for acct in Account.objects.filter(id__in=missing):
            ledger_accounts_ensure(account=acct)
        rows = dict(
            LedgerAccount.objects.filter(owner_id__in=ids, kind=kind, currency=cur).values_list("owner_id", "id")
        )
    return rows


@dataclass(frozen=True)
class Posting:
    """One balanced transaction to post: legs are (ledger account id, signed amount)."""

    key: str
    kind: str
    legs: Sequence[tuple[int, Decimal]]
    memo: str = ""


def _net_legs(posting: Posting) -> list[tuple[int, Decimal]]:
    net: dict[int, Decimal] = defaultdict(Decimal)
    for ledger_account_id, amount in posting.legs:
        if not isinstance(amount, Decimal) or not amount.is_finite():
            raise LedgerError(f"amount {amount!r} is not a finite Decimal")
        if amount != amount.quantize(Decimal("0.01")):
            raise LedgerError(f"amount {amount} has more than 2 decimal places")
        net[ledger_account_id] += amount
    legs_net = sorted((a, amt) for a, amt in net.items() if amt != 0)
    if sum((amt for _, amt in legs_net), Decimal(0)) != 0:
        raise UnbalancedTransaction(f"transaction {posting.key} does not sum to zero")
    if not legs_net:
        raise LedgerError(f"transaction {posting.key} moves no money")
    return legs_net


def ledger_post(
    *, key: str, kind: str, legs: Iterable[tuple[int, Decimal]], memo: str = ""
) -> LedgerTransaction:
    """Post one balanced transaction: legs are (ledger account id, signed amount).

    Legs on the same account are netted; zero legs are dropped. Raises UnbalancedTransaction,
    InsufficientFunds (a participant balance would go negative: the database CHECK refuses it)
    or AlreadyPosted (the key exists). Runs in a savepoint, so a refusal changes nothing.
    """
    return ledger_post_many(postings=[Posting(key=key, kind=kind, legs=list(legs), memo=memo)])[0]


def ledger_post_many(*, postings: Sequence[Posting]) -> list[LedgerTransaction]:
    """Post several balanced transactions with a constant number of statements.

    All or nothing (one savepoint); the same refusals as ledger_post. Each account's balance is
    updated once by the net of all postings, under its row lock, and each entry records the
    running balance after it (in posting order, which is also entry id order).
    """
    nets = [_net_legs(p) for p in postings]
    if not nets:
        return []
    try:
        with transaction.atomic():
            now = timezone.now()
            txns = [LedgerTransaction(key=p.key, kind=p.kind, memo=p.memo[:255], created_at=now) for p in postings]
            bulk = connection.vendor == "postgresql" and len(txns) > BULK_SQL_THRESHOLD
            if bulk:
                _insert_transactions_pg(txns, now)
            else:
                LedgerTransaction.objects.bulk_create(txns)
            totals: dict[int, Decimal] = defaultdict(Decimal)
            for legs in nets:
                for a, amt in legs:
                    totals[a] += amt
            final = _apply_balances(sorted(totals.items()))
            running = {a: final[a] - totals[a] for a in totals}
            entries = []
            for txn, legs in zip(txns, nets, strict=True):
                for a, amt in legs:
                    running[a] += amt
                    entries.append(
                        LedgerEntry(transaction=txn, account_id=a, amount=amt, balance_after=running[a], created_at=now)
                    )
            if bulk:
                _insert_entries_pg(entries, now)
            else:
                LedgerEntry.objects.bulk_create(entries, batch_size=5000)
    except IntegrityError as exc:
        existing = LedgerTransaction.objects.filter(key__in=[p.key for p in postings]).first()
        if existing is not None:
            raise AlreadyPosted(existing) from None
        if "ledger_no_negative_balance" in str(exc) or "CHECK constraint failed" in str(exc):
            raise InsufficientFunds() from None
        raise
    return txns


# Above this many transactions in one call, PostgreSQL gets one INSERT ... SELECT FROM unnest()
# per table instead of bulk_create: the same rows, without Django's per-value preparation.
BULK_SQL_THRESHOLD = 50


def _insert_transactions_pg(txns: list[LedgerTransaction], now) -> None:
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metering_ledgertransaction (key, kind, memo, created_at) "
            "SELECT k, c, m, %s FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(k, c, m) RETURNING id, key",
            [now, [t.key for t in txns], [t.kind for t in txns], [t.memo for t in txns]],
        )
        ids = dict((key, pk) for pk, key in cur.fetchall())
    for t in txns:
        t.pk = ids[t.key]
        t._state.adding = False


def _insert_entries_pg(entries: list[LedgerEntry], now) -> None:
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metering_ledgerentry (transaction_id, account_id, amount, balance_after, created_at) "
            "SELECT t, a, m, b, %s FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[], %s::numeric[]) AS v(t, a, m, b)",
            [
                now,
                [e.transaction.pk for e in entries],
                [e.account_id for e in entries],
                [e.amount for e in entries],
                [e.balance_after for e in entries],
            ],
        )


def _apply_balances(legs: list[tuple[int, Decimal]]) -> dict[int, Decimal]:
    """Add each delta to its account's balance and return the new balances.

    Legs are sorted by account id: the lock order. On PostgreSQL with more than two accounts the
    rows are locked in that order first, then updated in one statement.
    """
    out: dict[int, Decimal] = {}
    with connection.cursor() as cur:
        if connection.vendor == "postgresql" and len(legs) > 2:
            ids = [a for a, _ in legs]
            cur.execute("SELECT id FROM metering_ledgeraccount WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [ids])
            cur.execute(
                "UPDATE metering_ledgeraccount AS la SET balance = la.balance + v.delta "
                "FROM unnest(%s::bigint[], %s::numeric[]) AS v(id, delta) WHERE la.id = v.id "
                "RETURNING la.id, la.balance",
                [ids, [amt for _, amt in legs]],
            )
            out = {row[0]: Decimal(row[1]) for row in cur.fetchall()}
        else:
            # SQLite does NUMERIC arithmetic in floats: ROUND(..., 2) snaps every sum back to the
            # cent it is, so errors never accumulate and an emptied account is exactly 0, not
            # -1e-15 (which the CHECK would refuse). PostgreSQL's numeric is exact already.
            expr = "balance + %s" if connection.vendor == "postgresql" else "ROUND(balance + %s, 2)"
            for ledger_account_id, amount in legs:
                cur.execute(
                    f"UPDATE metering_ledgeraccount SET balance = {expr} WHERE id = %s RETURNING balance",
                    [amount, ledger_account_id],
                )
                out[ledger_account_id] = Decimal(str(cur.fetchone()[0])).quantize(Decimal("0.01"))
    return out
