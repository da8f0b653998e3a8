"""The PostgreSQL bulk ledger path: more than BULK_SQL_THRESHOLD (50) postings in one call go
through INSERT ... SELECT FROM unnest() instead of bulk_create. It must write exactly the rows
the ordinary path writes: each transaction's legs, balanced, on the right accounts, each entry's
balance_after the running sum, and account balances the sum of their entries.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metering import ledger
from metering.ledger import Posting, ledger_account_ids, ledger_post_many
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction, Settlement
from metering.selectors import balances_get
from metering.settlement import settlements_run_due
from metering.usage import usage_ingest
from pricing.services import instrument_match
from tests import factories

from .builders import after_grace, event, spot_instrument

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

CONTRACTS = 60


def unnest_inserts(queries) -> list[str]:
    return [q["sql"] for q in queries if "unnest" in q["sql"] and "INSERT INTO metering_ledgerentry" in q["sql"]]


def assert_ledger_consistent() -> None:
    """Recomputed from the entries: every transaction sums to zero, every balance_after is the
    running sum of its account in id order, every balance the sum of its entries."""
    by_txn: dict[int, Decimal] = defaultdict(Decimal)
    running: dict[int, Decimal] = defaultdict(Decimal)
    for txn_id, account_id, amount, after in LedgerEntry.objects.order_by("id").values_list(
        "transaction_id", "account_id", "amount", "balance_after"
    ):
        by_txn[txn_id] += amount
        running[account_id] += amount
        assert after == running[account_id], (account_id, after, running[account_id])
    assert all(v == 0 for v in by_txn.values())
    for acct in LedgerAccount.objects.all():
        assert acct.balance == running.get(acct.pk, Decimal("0")), acct


def test_a_settlement_of_more_than_fifty_contracts_takes_the_bulk_path_and_posts_each_contract(settings):
    settings.MAKER_FEE_BPS = 5
    settings.TAKER_FEE_BPS = 10
    factories.seed_catalog()
    buyer = factories.AccountFactory(is_buyer=True)
    provider = factories.AccountFactory(is_buyer=False, is_provider=True)
    factories.fund(buyer, Decimal("1000.00"))
    inst = spot_instrument(tier="standard")
    # 60 resting 1-lot sells at rising prices, taken by one buy: 60 contracts of one pair.
    for i in range(CONTRACTS):
        factories.place(provider, inst, "sell", 1, f"{Decimal('1.00') + Decimal('0.01') * i}")
    factories.place(buyer, inst, "buy", CONTRACTS, "1.60")
    instrument_match(instrument_id=inst.pk)
    trades = list(inst.trades.order_by("match_sequence"))
    assert len(trades) == CONTRACTS > ledger.BULK_SQL_THRESHOLD
    # 25.5 Mtok delivered: 25 contracts full, one half, the rest unused.
    assert (
        usage_ingest(provider=provider, events=[event(buyer, inst, prompt=500_000) for _ in range(51)]).count(
            "accepted"
        )
        == 51
    )
    before = balances_get(account=buyer)

    with CaptureQueriesContext(connection) as queries:
        report = settlements_run_due(now=after_grace(inst))
    assert report.contracts == CONTRACTS
    assert len(unnest_inserts(queries.captured_queries)) == 1, "the bulk path was not taken"

    ids = {
        "escrow": ledger_account_ids({buyer.pk}, LedgerAccount.Kind.ESCROW)[buyer.pk],
        "buyer": ledger_account_ids({buyer.pk}, LedgerAccount.Kind.AVAILABLE)[buyer.pk],
        "provider": ledger_account_ids({provider.pk}, LedgerAccount.Kind.AVAILABLE)[provider.pk],
        "fees": ledger.system_account(LedgerAccount.Kind.FEES).pk,
    }
    delivered = []
    for t in trades:
        s = Settlement.objects.get(trade=t)
        txn = LedgerTransaction.objects.get(key=f"settle:{t.pk}")
        assert s.transaction_id == txn.pk
        legs = dict(txn.entries.values_list("account_id", "amount"))
        expected = {
            ids["escrow"]: -t.buyer_escrow,
            ids["buyer"]: s.refund,
            ids["provider"]: s.provider_payout,
            ids["fees"]: s.buyer_fee + s.seller_fee,
        }
        assert legs == {a: v for a, v in expected.items() if v != 0}, t.pk
        assert s.value + s.buyer_fee + s.refund == t.buyer_escrow
        delivered.append(s.delivered_tokens)
    assert delivered == [1_000_000] * 25 + [500_000] + [0] * 34
    after = balances_get(account=buyer)
    assert after["escrow"] == before["escrow"] - sum(t.buyer_escrow for t in trades)
    assert after["available"] == before["available"] + sum(Settlement.objects.values_list("refund", flat=True))
    assert_ledger_consistent()


def _postings(prefix: str, a: int, b: int, c: int, n: int) -> list[Posting]:
    # a pays b and c alternately, in varied amounts: balances move in both directions.
    out = []
    for i in range(n):
        amount = Decimal(i % 7 + 1) + Decimal("0.01") * i
        legs = (
            [(a, -amount), (b, amount - Decimal("0.01")), (c, Decimal("0.01"))]
            if i % 2
            else [(a, -amount), (c, amount)]
        )
        out.append(Posting(key=f"{prefix}:{i}", kind=LedgerTransaction.Kind.DEPOSIT, legs=legs, memo=f"{prefix} {i}"))
    return out


def test_the_bulk_path_writes_the_same_entries_as_the_ordinary_path(monkeypatch):
    from metering.ledger import ledger_accounts_ensure

    def three_accounts():
        accts = [factories.AccountFactory() for _ in range(3)]
        factories.fund(accts[0], Decimal("10000.00"))
        return [ledger_accounts_ensure(account=x)["available"].pk for x in accts]

    n = ledger.BULK_SQL_THRESHOLD + 11
    bulk_accounts = three_accounts()
    with CaptureQueriesContext(connection) as queries:
        bulk = ledger_post_many(postings=_postings("bulk", *bulk_accounts, n))
    assert len(unnest_inserts(queries.captured_queries)) == 1

    plain_accounts = three_accounts()
    monkeypatch.setattr(ledger, "BULK_SQL_THRESHOLD", 10**9)
    with CaptureQueriesContext(connection) as queries:
        plain = ledger_post_many(postings=_postings("plain", *plain_accounts, n))
    assert unnest_inserts(queries.captured_queries) == []

    def rows(txns, accounts):
        where = {a: i for i, a in enumerate(accounts)}
        return [
            [
                (where[e.account_id], e.amount, e.balance_after)
                for e in LedgerEntry.objects.filter(transaction=t).order_by("id")
            ]
            for t in txns
        ]

    # Transactions come back with their ids, keys and memos, in posting order.
    assert [t.key for t in bulk] == [f"bulk:{i}" for i in range(n)]
    assert [LedgerTransaction.objects.get(pk=t.pk).memo for t in bulk] == [f"bulk {i}" for i in range(n)]
    assert rows(bulk, bulk_accounts) == rows(plain, plain_accounts)
    assert [LedgerAccount.objects.get(pk=a).balance for a in bulk_accounts] == [
        LedgerAccount.objects.get(pk=a).balance for a in plain_accounts
    ]
    assert_ledger_consistent()
