"""Funding requests: participants ask for deposits and withdrawals, staff decide.

The money moves in two phases (TigerBeetle's pending/post/void): a withdrawal request holds its
amount at once (available -> withdrawal hold), approval pays the hold out to the outside world
(hold -> deposits, the system account of money that entered or left the exchange), rejection or
cancellation voids it (hold -> available). A deposit request moves nothing until staff have
seen the money arrive and approve it (deposits -> available).

Lock order: the request row first (`select_for_update`, so two staff clicking at once decide it
once), then the ledger accounts inside ledger_post, in ascending id order as everywhere.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from marketplace.models import Account
from marketplace.services import NotFound, ServiceError

from .ledger import InsufficientFunds, currency, ledger_accounts_ensure, ledger_post, system_account
from .models import FundingRequest, LedgerAccount, LedgerTransaction
from .services import parse_amount

Kind = FundingRequest.Kind
Status = FundingRequest.Status

REFERENCE_MAX = 140


def _reference(raw: str | None) -> str:
    reference = (raw or "").strip()
    if "\x00" in reference:
        raise ServiceError("invalid_reference", "The reference contains a NUL character.", field="reference")
    if len(reference) > REFERENCE_MAX:
        raise ServiceError(
            "invalid_reference", f"The reference is at most {REFERENCE_MAX} characters.", field="reference"
        )
    return reference


def _hold_account(account: Account) -> LedgerAccount:
    hold, _ = LedgerAccount.objects.get_or_create(
        owner=account, kind=LedgerAccount.Kind.WITHDRAWAL_HOLD, currency=currency(), defaults={"is_system": False}
    )
    return hold


def funding_deposit_request(
    *, account: Account, amount: Decimal | str, reference: str = "", user: AbstractBaseUser | None = None
) -> FundingRequest:
    """Record that the participant has sent (or will send) money; nothing is credited yet."""
    amount = parse_amount(amount)
    return FundingRequest.objects.create(
        account=account,
        kind=Kind.DEPOSIT,
        amount=amount,
        currency=currency(),
        reference=_reference(reference),
        requested_by=user,
    )


def funding_withdrawal_request(
    *, account: Account, amount: Decimal | str, reference: str = "", user: AbstractBaseUser | None = None
) -> FundingRequest:
    """Ask to be paid out; the amount leaves available at once and waits in the hold."""
    amount = parse_amount(amount)
    reference = _reference(reference)
    with transaction.atomic():
        ledger = ledger_accounts_ensure(account=account)
        hold = _hold_account(account)
        # The hold is posted before the request row exists (the row's CHECK wants it), so its
        # key is a fresh uuid; the request links to it, and the release/payout keys carry the id.
        try:
            txn = ledger_post(
                key=f"withdrawal-hold:{uuid.uuid4()}",
                kind=LedgerTransaction.Kind.WITHDRAWAL_HOLD,
                legs=[(ledger["available"].pk, -amount), (hold.pk, amount)],
                memo=f"withdrawal requested: {amount} held until staff decide"
                + (f" (to {reference})" if reference else ""),
            )
        except InsufficientFunds:
            raise ServiceError(
                "insufficient_funds",
                f"{amount} is more than the {ledger['available'].balance} available to withdraw "
                "(funds in escrow for open orders and contracts cannot be withdrawn).",
                field="amount",
                status=409,
            ) from None
        request = FundingRequest.objects.create(
            account=account, kind=Kind.WITHDRAWAL, amount=amount, currency=currency(), reference=reference,
            requested_by=user, hold_transaction=txn,
        )
    return request


def _locked_pending(*, request_id: int, account: Account | None = None) -> FundingRequest:
    qs = FundingRequest.objects.select_for_update().select_related("account")
    if account is not None:
        qs = qs.filter(account=account)
    request = qs.filter(pk=request_id).first()
    if request is None:
        raise NotFound("funding_request_not_found", f"No funding request {request_id}.")
    if request.status != Status.PENDING:
        raise ServiceError(
            "funding_already_decided",
            f"Funding request {request_id} is already {request.status}; nothing was changed.",
            status=409,
        )
    return request


def _finish(request: FundingRequest, *, status: str, user, note: str, txn: LedgerTransaction | None) -> FundingRequest:
    request.status = status
    request.decided_by = user
    request.decided_at = timezone.now()
    request.decision_note = (note or "").strip()[:255]
    request.decision_transaction = txn
    request.save(update_fields=["status", "decided_by", "decided_at", "decision_note", "decision_transaction"])
    return request


def _void_hold(request: FundingRequest, *, why: str) -> LedgerTransaction:
    ledger = ledger_accounts_ensure(account=request.account)
    return ledger_post(
        key=f"withdrawal-release:{request.pk}",
        kind=LedgerTransaction.Kind.WITHDRAWAL_RELEASE,
        legs=[(_hold_account(request.account).pk, -request.amount), (ledger["available"].pk, request.amount)],
        memo=f"withdrawal request #{request.pk} {why}: {request.amount} back to available",
    )


def funding_request_approve(*, request_id: int, staff: AbstractBaseUser, note: str = "") -> FundingRequest:
    """Staff: the money arrived (deposit) or was paid out (withdrawal). Decides once."""
    with transaction.atomic():
        request = _locked_pending(request_id=request_id)
        deposits = system_account(LedgerAccount.Kind.DEPOSITS).pk
        if request.kind == Kind.DEPOSIT:
            ledger = ledger_accounts_ensure(account=request.account)
            txn = ledger_post(
                key=f"deposit-request:{request.pk}",
                kind=LedgerTransaction.Kind.DEPOSIT,
                legs=[(deposits, -request.amount), (ledger["available"].pk, request.amount)],
                memo=f"deposit request #{request.pk} approved"
                + (f" (ref {request.reference})" if request.reference else ""),
            )
        else:
            txn = ledger_post(
                key=f"withdrawal-paid:{request.pk}",
                kind=LedgerTransaction.Kind.WITHDRAWAL,
                legs=[(_hold_account(request.account).pk, -request.amount), (deposits, request.amount)],
                memo=f"withdrawal request #{request.pk} paid out"
                + (f" to {request.reference}" if request.reference else ""),
            )
        return _finish(request, status=Status.APPROVED, user=staff, note=note, txn=txn)


def funding_request_reject(*, request_id: int, staff: AbstractBaseUser, note: str = "") -> FundingRequest:
    """Staff: refuse the request; a withdrawal's held funds go back to available."""
    with transaction.atomic():
        request = _locked_pending(request_id=request_id)
        txn = _void_hold(request, why="rejected") if request.kind == Kind.WITHDRAWAL else None
        return _finish(request, status=Status.REJECTED, user=staff, note=note, txn=txn)


def funding_request_cancel(*, account: Account, request_id: int, user: AbstractBaseUser | None = None) -> FundingRequest:
    """The participant withdraws its own pending request."""
    with transaction.atomic():
        request = _locked_pending(request_id=request_id, account=account)
        txn = _void_hold(request, why="cancelled") if request.kind == Kind.WITHDRAWAL else None
        return _finish(request, status=Status.CANCELLED, user=user, note="cancelled by the account", txn=txn)


def funding_sandbox_credit(
    *, account: Account, amount: Decimal | str, user: AbstractBaseUser | None = None
) -> FundingRequest:
    """Embedded demo only: credit labelled test funds without staff. Refused unless the sandbox
    setting is on (it is off in production, and production refuses to start with it on)."""
    if not settings.SANDBOX_FUNDING:
        raise ServiceError(
            "sandbox_disabled", "Test funds exist only in the sandbox demo; request a deposit instead.", status=403
        )
    amount = parse_amount(amount)
    if amount > settings.SANDBOX_CREDIT_MAX:
        raise ServiceError(
            "invalid_amount", f"A sandbox credit is at most {settings.SANDBOX_CREDIT_MAX} test funds.", field="amount"
        )
    with transaction.atomic():
        request = FundingRequest.objects.create(
            account=account, kind=Kind.DEPOSIT, amount=amount, currency=currency(), sandbox=True,
            reference="SANDBOX TEST FUNDS", requested_by=user,
        )
        ledger = ledger_accounts_ensure(account=account)
        txn = ledger_post(
            key=f"sandbox-credit:{request.pk}",
            kind=LedgerTransaction.Kind.DEPOSIT,
            legs=[(system_account(LedgerAccount.Kind.DEPOSITS).pk, -amount), (ledger["available"].pk, amount)],
            memo=f"TEST FUNDS (sandbox credit #{request.pk}): not real money",
        )
        return _finish(request, status=Status.APPROVED, user=user, note="sandbox: credited at once", txn=txn)
