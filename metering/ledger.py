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
from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone

from marketplace.db_errors import sqlstate
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


def participant_ledger_ids(*, account: Account) -> dict[str, int]:
    """Kind -> id of the participant's ledger accounts, looked up once per Account instance.

    The ids never change (ledger accounts are never deleted or re-owned), so an instance that
    lives across requests (the API key cache holds its account) posts without looking them up.
    """
    cur = currency()
    cached = account.__dict__.get("ledger_ids_cached")
    if cached is not None and cached[0] == cur:
        return cached[1]
    ids = dict(LedgerAccount.objects.filter(owner=account, currency=cur).values_list("kind", "id"))
    if any(k not in ids for k in PARTICIPANT_KINDS):
        # Created now, possibly in a transaction that rolls back: not remembered.
        return {kind: la.pk for kind, la in ledger_accounts_ensure(account=account).items()}
    account.__dict__["ledger_ids_cached"] = (cur, ids)
    return ids


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


def ledger_post_in_transaction(
    *, key: str, kind: str, legs: Iterable[tuple[int, Decimal]], memo: str = ""
) -> tuple[LedgerTransaction, dict[int, Decimal]]:
    """Post one balanced transaction in the caller's transaction, with no savepoint of its own,
    and return it with the new balance of every account it moved.

    For hot paths that roll back everything on a refusal anyway. The refusals are
    ledger_post's (UnbalancedTransaction before any statement; InsufficientFunds when the
    balance CHECK refuses), but a refusal from the database may leave the caller's transaction
    aborted: the caller must let the exception leave its atomic block. The key must be new: a
    duplicate is an IntegrityError here, not AlreadyPosted. On PostgreSQL it is one statement
    (ledger_post_with_new_row without the row).
    """
    legs_net = _net_legs(Posting(key=key, kind=kind, legs=list(legs), memo=memo))
    now = timezone.now()
    if connection.vendor == "postgresql":
        _, txn_id, final = _post_statement(
            src_sql="SELECT NULL::bigint AS id", src_params=[], legs_net=legs_net, kind=kind,
            key_sql="%s", key_params=[key], memo_sql="%s", memo_params=[memo[:255]], now=now,
        )  # fmt: skip
        txn = LedgerTransaction(pk=txn_id, key=key, kind=kind, memo=memo[:255], created_at=now)
        txn._state.adding = False
        return txn, final
    txn = LedgerTransaction.objects.create(key=key, kind=kind, memo=memo[:255], created_at=now)
    # One UPDATE for every leg (SQLite takes no row locks, so the order is moot); ROUND as in
    # _apply_balances.
    cases = " ".join("WHEN %s THEN %s" for _ in legs_net)
    params = [x for a, amt in legs_net for x in (a, str(amt))]
    try:
        with connection.cursor() as cur:
            cur.execute(
                f"UPDATE metering_ledgeraccount SET balance = ROUND(balance + CASE id {cases} END, 2) "
                f"WHERE id IN ({', '.join(['%s'] * len(legs_net))}) RETURNING id, balance",
                [*params, *(a for a, _ in legs_net)],
            )
            final = {a: Decimal(str(b)).quantize(Decimal("0.01")) for a, b in cur.fetchall()}
    except IntegrityError as exc:
        if is_negative_balance(exc):
            raise InsufficientFunds() from None
        raise
    if len(final) != len(legs_net):
        raise LedgerError(f"transaction {key}: unknown ledger account among {[a for a, _ in legs_net]}")
    LedgerEntry.objects.bulk_create(
        [LedgerEntry(transaction=txn, account_id=a, amount=amt, balance_after=final[a], created_at=now)
         for a, amt in legs_net]
    )  # fmt: skip
    return txn, final


def ledger_post_with_new_row(
    *,
    row_sql: str,
    row_params: Sequence,
    kind: str,
    legs: Iterable[tuple[int, Decimal]],
    key_prefix: str,
    memo_prefix: str,
    memo_suffix: str = "",
) -> int | None:
    """PostgreSQL only: in ONE statement, insert the row that causes a posting and post it.

    `row_sql` is an INSERT ... RETURNING id that may insert nothing (e.g. its SELECT found the
    instrument closed); the ledger transaction's key is key_prefix + that id, its memo
    memo_prefix + id + memo_suffix. Returns the row's id, or None if it inserted nothing (and
    nothing was posted). Being one statement it is atomic even in autocommit, so a caller
    outside any transaction pays one round trip for the row, the balances and the entries,
    with no BEGIN or COMMIT of its own. The refusals are ledger_post_in_transaction's.
    """
    legs_net = _net_legs(Posting(key=key_prefix, kind=kind, legs=list(legs)))
    row_id, txn_id, _ = _post_statement(
        src_sql=row_sql, src_params=list(row_params), legs_net=legs_net, kind=kind,
        key_sql="%s || src.id", key_params=[key_prefix],
        memo_sql="left(%s || src.id || %s, 255)", memo_params=[memo_prefix, memo_suffix], now=timezone.now(),
    )  # fmt: skip
    return row_id


def _post_statement(
    *, src_sql, src_params, legs_net, kind, key_sql, key_params, memo_sql, memo_params, now
) -> tuple[int | None, int | None, dict[int, Decimal]]:
    ids = [a for a, _ in legs_net]
    # Nothing is locked or posted unless `src` yields its row. `locked` takes the row locks in
    # ascending id order (LockRows above the sort), after src's own locks (it joins src) and
    # before the UPDATE, which joins on it, changes a balance: the exchange-wide lock order.
    # Each entry's balance_after is its account's new balance (one leg per account, netted).
    sql = f"""
        WITH src AS ({src_sql}),
        v(id, delta) AS (SELECT * FROM unnest(%s::bigint[], %s::numeric[])),
        locked AS (
            SELECT la.id FROM metering_ledgeraccount AS la, src
            WHERE la.id = ANY(%s::bigint[]) ORDER BY la.id FOR UPDATE OF la
        ),
        bal AS (
            UPDATE metering_ledgeraccount AS la SET balance = la.balance + v.delta
            FROM v JOIN locked ON locked.id = v.id WHERE la.id = v.id
            RETURNING la.id, la.balance
        ),
        txn AS (
            INSERT INTO metering_ledgertransaction (key, kind, memo, created_at)
            SELECT {key_sql}, %s, {memo_sql}, %s FROM src RETURNING id
        ),
        ent AS (
            INSERT INTO metering_ledgerentry (transaction_id, account_id, amount, balance_after, created_at)
            SELECT txn.id, bal.id, v.delta, bal.balance, %s FROM txn, bal JOIN v ON v.id = bal.id ORDER BY bal.id
        )
        SELECT src.id, (SELECT id FROM txn), bal.id, bal.balance,
            -- Every leg's account must exist: otherwise fail the statement (division by zero),
            -- which in autocommit is the only way to take back what it wrote.
            1 / (CASE WHEN (SELECT count(*) FROM bal) = %s THEN 1 ELSE 0 END)
        FROM src LEFT JOIN bal ON true
    """
    params = [
        *src_params, ids, [amt for _, amt in legs_net], ids, *key_params, kind, *memo_params, now, now, len(ids),
    ]
    try:
        with connection.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
    except IntegrityError as exc:
        if is_negative_balance(exc):
            raise InsufficientFunds() from None
        raise
    except DataError as exc:
        if sqlstate(exc) == "22012":
            raise LedgerError(f"unknown ledger account among {ids}") from None
        raise
    if not rows:
        return None, None, {}
    return rows[0][0], rows[0][1], {a: Decimal(b) for _, _, a, b, _ in rows}


def is_negative_balance(exc: BaseException) -> bool:
    """Whether an IntegrityError is the participant balance CHECK (ledger_no_negative_balance)
    refusing: by the constraint's name on PostgreSQL, SQLite's CHECK failure otherwise."""
    cause = exc.__cause__
    diag = getattr(cause, "diag", None)
    if diag is not None:
        return diag.constraint_name == "ledger_no_negative_balance"
    return "CHECK constraint failed" in str(exc)


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
