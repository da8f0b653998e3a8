"""ledger_post / ledger_post_many: netting, idempotency keys, running balances, exact cents."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.ledger import (
    AlreadyPosted,
    InsufficientFunds,
    Posting,
    UnbalancedTransaction,
    ledger_accounts_ensure,
    ledger_post,
    ledger_post_many,
    system_account,
)
from metering.models import LedgerEntry, LedgerTransaction
from metering.services import funds_deposit, funds_withdraw
from tests import factories
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db

D = Decimal


def test_cents_add_up_exactly_and_an_emptied_account_is_zero(buyer):
    # Floats would leave 0.1 + 0.2 - 0.3 = 5.55e-17 (and -1e-15 trips the CHECK): never here.
    acct = factories.AccountFactory()
    for amount in ("0.10", "0.20", "0.07", "1234567.89"):
        funds_deposit(account=acct, amount=D(amount))
    funds_withdraw(account=acct, amount=D("1234568.26"))
    available = ledger_accounts_ensure(account=acct)["available"]
    available.refresh_from_db()
    assert available.balance == D("0.00")
    last = LedgerEntry.objects.filter(account=available).latest("id")
    assert last.balance_after == D("0.00")
    assert_invariants()


def test_each_entry_records_the_running_balance_in_posting_order(buyer):
    acct = factories.AccountFactory()
    led = ledger_accounts_ensure(account=acct)
    deposits = system_account("deposits").pk
    ledger_post_many(
        postings=[
            Posting(key=f"t:{i}", kind="deposit", legs=[(deposits, -D(x)), (led["available"].pk, D(x))])
            for i, x in enumerate(["1.00", "2.50", "0.25"])
        ]
    )
    rows = list(LedgerEntry.objects.filter(account=led["available"]).order_by("id").values_list("amount", "balance_after"))
    assert rows == [(D("1.00"), D("1.00")), (D("2.50"), D("3.50")), (D("0.25"), D("3.75"))]
    assert_invariants()


def test_a_key_posts_once_and_refusals_change_nothing(buyer):
    acct = factories.AccountFactory()
    led = ledger_accounts_ensure(account=acct)
    deposits = system_account("deposits").pk
    ledger_post(key="k", kind="deposit", legs=[(deposits, D("-5.00")), (led["available"].pk, D("5.00"))])
    with pytest.raises(AlreadyPosted):
        ledger_post(key="k", kind="deposit", legs=[(deposits, D("-5.00")), (led["available"].pk, D("5.00"))])
    with pytest.raises(UnbalancedTransaction):
        ledger_post(key="u", kind="deposit", legs=[(deposits, D("-5.00")), (led["available"].pk, D("4.00"))])
    with pytest.raises(InsufficientFunds):
        ledger_post(key="o", kind="withdrawal", legs=[(led["available"].pk, D("-5.01")), (deposits, D("5.01"))])
    assert list(LedgerTransaction.objects.filter(key__in=["k", "u", "o"]).values_list("key", flat=True)) == ["k"]
    led["available"].refresh_from_db()
    assert led["available"].balance == D("5.00")
    assert_invariants()
