"""Posting to the double-entry ledger: the only code that writes LedgerEntry or balances.

Lock order, everywhere in the exchange: instrument-level locks first, ledger accounts last and
in ascending id order. Keeping that order is what makes concurrent matching, placement and
settlement deadlock-free.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F

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
    assert kind in LedgerAccount.SYSTEM_KINDS
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


def ledger_post(
    *, key: str, kind: str, legs: Iterable[tuple[int, Decimal]], memo: str = ""
) -> LedgerTransaction:
    """Post one balanced transaction: legs are (ledger account id, signed amount).

    Legs on the same account are netted; zero legs are dropped. Raises UnbalancedTransaction,
    InsufficientFunds (a participant balance would go negative: the database CHECK refuses it)
    or AlreadyPosted (the key exists). Runs in a savepoint, so a refusal changes nothing.
    """
    net: dict[int, Decimal] = defaultdict(Decimal)
    for ledger_account_id, amount in legs:
        if not isinstance(amount, Decimal) or not amount.is_finite():
            raise LedgerError(f"amount {amount!r} is not a finite Decimal")
        if amount != amount.quantize(Decimal("0.01")):
            raise LedgerError(f"amount {amount} has more than 2 decimal places")
        net[ledger_account_id] += amount
    legs_net = sorted((a, amt) for a, amt in net.items() if amt != 0)
    if sum((amt for _, amt in legs_net), Decimal(0)) != 0:
        raise UnbalancedTransaction(f"transaction {key} does not sum to zero")
    if not legs_net:
        raise LedgerError(f"transaction {key} moves no money")

    try:
        with transaction.atomic():
            txn = LedgerTransaction.objects.create(key=key, kind=kind, memo=memo[:255])
            LedgerEntry.objects.bulk_create(
                [
                    LedgerEntry(transaction=txn, account_id=a, amount=amt, created_at=txn.created_at)
                    for a, amt in legs_net
                ]
            )
            _apply_balances(legs_net)
    except IntegrityError as exc:
        existing = LedgerTransaction.objects.filter(key=key).first()
        if existing is not None:
            raise AlreadyPosted(existing) from None
        if "ledger_no_negative_balance" in str(exc) or "CHECK constraint failed" in str(exc):
            raise InsufficientFunds() from None
        raise
    return txn


def _apply_balances(legs: list[tuple[int, Decimal]]) -> None:
    """Add each leg to its account's balance; legs are sorted by account id (the lock order)."""
    if connection.vendor == "postgresql" and len(legs) > 2:
        ids = [a for a, _ in legs]
        with connection.cursor() as cur:
            cur.execute(
                "SELECT id FROM metering_ledgeraccount WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [ids]
            )
            cur.execute(
                "UPDATE metering_ledgeraccount AS la SET balance = la.balance + v.delta "
                "FROM unnest(%s::bigint[], %s::numeric[]) AS v(id, delta) WHERE la.id = v.id",
                [ids, [amt for _, amt in legs]],
            )
        return
    for ledger_account_id, amount in legs:
        LedgerAccount.objects.filter(pk=ledger_account_id).update(balance=F("balance") + amount)
