"""Writes of the money side: funding. (Usage ingestion and settlement live beside it.)"""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation

from django.db import transaction

from marketplace.models import Account
from marketplace.services import ServiceError

from .ledger import InsufficientFunds, ledger_accounts_ensure, ledger_post, system_account
from .models import LedgerAccount, LedgerTransaction

MAX_FUNDING = Decimal("1000000000000")


def parse_amount(raw: str | Decimal) -> Decimal:
    try:
        amount = Decimal(str(raw))
    except InvalidOperation:
        raise ServiceError("invalid_amount", f"{raw!r} is not an amount.", field="amount") from None
    if not amount.is_finite() or amount <= 0:
        raise ServiceError("invalid_amount", "The amount must be a positive number.", field="amount")
    # The cap first: quantize() of a huge exponent (1e999999) raises instead of answering.
    if amount > MAX_FUNDING:
        raise ServiceError("invalid_amount", f"The amount is too large (at most {MAX_FUNDING:,}).", field="amount")
    if amount != amount.quantize(Decimal("0.01")):
        raise ServiceError("invalid_amount", "The amount has at most 2 decimal places (cents).", field="amount")
    return amount


def funds_deposit(*, account: Account, amount: Decimal, reason: str = "", key: str | None = None) -> LedgerTransaction:
    """Staff credit money received from outside: deposits (system) -> participant available."""
    amount = parse_amount(amount)
    with transaction.atomic():
        ledger = ledger_accounts_ensure(account=account)
        return ledger_post(
            key=key or f"deposit:{uuid.uuid4()}",
            kind=LedgerTransaction.Kind.DEPOSIT,
            legs=[(system_account(LedgerAccount.Kind.DEPOSITS).pk, -amount), (ledger["available"].pk, amount)],
            memo=reason or f"deposit to {account.slug}",
        )


def funds_withdraw(*, account: Account, amount: Decimal, reason: str = "", key: str | None = None) -> LedgerTransaction:
    """Staff pay money out: participant available -> deposits. Refused beyond the balance."""
    amount = parse_amount(amount)
    with transaction.atomic():
        ledger = ledger_accounts_ensure(account=account)
        try:
            return ledger_post(
                key=key or f"withdraw:{uuid.uuid4()}",
                kind=LedgerTransaction.Kind.WITHDRAWAL,
                legs=[(ledger["available"].pk, -amount), (system_account(LedgerAccount.Kind.DEPOSITS).pk, amount)],
                memo=reason or f"withdrawal from {account.slug}",
            )
        except InsufficientFunds:
            raise ServiceError(
                "insufficient_funds",
                f"{account.slug} has {ledger['available'].balance} available; cannot withdraw {amount}.",
                status=409,
            ) from None
