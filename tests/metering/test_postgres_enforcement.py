"""The database itself refuses what would break the ledger (PostgreSQL, raw SQL, no Python).

TransactionTestCase: the deferred sum-to-zero trigger fires at COMMIT, so these tests commit.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test import TransactionTestCase

from metering.ledger import ledger_accounts_ensure, system_account
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction
from tests import factories
from tests.invariants import assert_invariants

pytestmark = pytest.mark.postgres


class LedgerEnforcedByPostgresTest(TransactionTestCase):
    def setUp(self) -> None:
        self.buyer = factories.AccountFactory(is_buyer=True)
        factories.fund(self.buyer, Decimal("100.00"))
        self.available = ledger_accounts_ensure(account=self.buyer)["available"]
        self.deposits = system_account(LedgerAccount.Kind.DEPOSITS)

    def test_an_unbalanced_transaction_is_refused_at_commit(self) -> None:
        before = LedgerEntry.objects.count()
        with self.assertRaisesRegex(IntegrityError, "does not sum to zero"):
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(
                    "INSERT INTO metering_ledgertransaction (key, kind, memo, created_at) "
                    "VALUES ('raw:unbalanced', 'deposit', '', now()) RETURNING id"
                )
                txn_id = cur.fetchone()[0]
                cur.execute(
                    "INSERT INTO metering_ledgerentry (transaction_id, account_id, amount, created_at) "
                    "VALUES (%s, %s, 5.00, now()), (%s, %s, -4.00, now())",
                    [txn_id, self.available.pk, txn_id, self.deposits.pk],
                )
        assert LedgerEntry.objects.count() == before
        assert not LedgerTransaction.objects.filter(key="raw:unbalanced").exists()
        assert_invariants()

    def test_a_balanced_raw_transaction_commits(self) -> None:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(
                "INSERT INTO metering_ledgertransaction (key, kind, memo, created_at) "
                "VALUES ('raw:balanced', 'deposit', '', now()) RETURNING id"
            )
            txn_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO metering_ledgerentry (transaction_id, account_id, amount, created_at) "
                "VALUES (%s, %s, 5.00, now()), (%s, %s, -5.00, now())",
                [txn_id, self.available.pk, txn_id, self.deposits.pk],
            )
        assert LedgerEntry.objects.filter(transaction__key="raw:balanced").count() == 2

    def test_an_entry_cannot_be_updated(self) -> None:
        entry = LedgerEntry.objects.filter(account=self.available).first()
        with self.assertRaisesRegex(DatabaseError, "immutable"):
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute("UPDATE metering_ledgerentry SET amount = 1000000 WHERE id = %s", [entry.pk])
        entry.refresh_from_db()
        assert entry.amount == Decimal("100.00")

    def test_an_entry_cannot_be_deleted(self) -> None:
        count = LedgerEntry.objects.count()
        with self.assertRaisesRegex(DatabaseError, "immutable"):
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute("DELETE FROM metering_ledgerentry")
        assert LedgerEntry.objects.count() == count

    def test_an_overdraft_is_refused_by_the_check_constraint(self) -> None:
        with self.assertRaisesRegex(IntegrityError, "ledger_no_negative_balance"):
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(
                    "UPDATE metering_ledgeraccount SET balance = balance - 100.01 WHERE id = %s", [self.available.pk]
                )
        self.available.refresh_from_db()
        assert self.available.balance == Decimal("100.00")
        # System accounts may go negative (deposits is -100.00 now).
        self.deposits.refresh_from_db()
        assert self.deposits.balance == Decimal("-100.00")

    def test_usage_counts_cannot_be_negative_or_duplicated_in_the_database(self) -> None:
        provider = factories.AccountFactory(is_buyer=False, is_provider=True)
        factories.seed_catalog()
        inst = factories.open_instrument()
        insert = (
            "INSERT INTO metering_usageevent (provider_id, buyer_id, instrument_id, event_id, occurred_at, "
            "input_tokens, cached_input_tokens, output_tokens, billable_tokens, payload_hash, received_at) "
            "VALUES (%s, %s, %s, %s, now(), %s, 0, 0, 0, '', now())"
        )
        with self.assertRaises(IntegrityError), transaction.atomic(), connection.cursor() as cur:
            cur.execute(insert, [provider.pk, self.buyer.pk, inst.pk, "neg", -5])
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(insert, [provider.pk, self.buyer.pk, inst.pk, "once", 5])
        with self.assertRaises(IntegrityError), transaction.atomic(), connection.cursor() as cur:
            cur.execute(insert, [provider.pk, self.buyer.pk, inst.pk, "once", 5])
