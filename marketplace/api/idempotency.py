"""Idempotency-Key: the same key and body replay the first response; another body is a 409."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from django.db import IntegrityError, connection, transaction
from rest_framework.response import Response

from marketplace.models import Account, IdempotencyRecord
from marketplace.services import ServiceError

MAX_KEY_LENGTH = 128


def request_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def idempotency_lock_id(*, account_id: int, key: str) -> int:
    """The advisory lock id of (account, key): 64 bits of its hash (a collision only serializes)."""
    digest = hashlib.sha256(f"idempotency:{account_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def idempotency_lock(*, account_id: int, key: str) -> None:
    """Hold (account, key)'s advisory lock to the end of the transaction (PostgreSQL; SQLite
    serializes writers anyway)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [idempotency_lock_id(account_id=account_id, key=key)])


def _replay(record: IdempotencyRecord, body_hash: str) -> Response:
    if record.request_hash != body_hash:
        raise ServiceError(
            "idempotency_conflict",
            "This Idempotency-Key was already used with a different request body.",
            status=409,
        )
    response = Response(record.response_body, status=record.response_status)
    response["Idempotent-Replayed"] = "true"
    return response


class _AlreadyRecorded(Exception):
    """Another request with this key committed first: roll this one back and replay that."""


def _record_insert(*, account: Account, key: str, body_hash: str, response: Response) -> bool:
    """Record the response unless (account, key) has a record; False if it had one.

    One INSERT ... ON CONFLICT DO NOTHING: on PostgreSQL a conflict is decided against the
    committed record of a request that held the key's lock before this one."""
    record = IdempotencyRecord(
        account=account,
        key=key,
        request_hash=body_hash,
        response_status=response.status_code,
        response_body=json.loads(json.dumps(response.data, default=str)),
    )
    fields = [f for f in IdempotencyRecord._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {IdempotencyRecord._meta.db_table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))}) "
            "ON CONFLICT (account_id, key) DO NOTHING RETURNING id",
            [f.get_db_prep_save(f.pre_save(record, True), connection) for f in fields],
        )
        return cur.fetchone() is not None


def _recorded(*, account: Account, key: str) -> IdempotencyRecord | None:
    return IdempotencyRecord.objects.filter(account=account, key=key).first()


def idempotent(*, key: str | None, account: Account, data, run: Callable[[], Response]) -> Response:
    """Run `run` once per (account, key); it must do its writes in the caller's transaction.

    The first request of a key records its response in the transaction of its writes; a
    repeat replays it. A concurrent repeat waits on the key's lock for the first to commit.
    There is no look-up before `run`: a repeat runs, finds the record when it inserts its own
    (or when `run` refuses, e.g. the funds are now escrowed by the first), rolls back and
    replays, so the common case (a new key) costs one statement besides the lock.
    """
    if key is None:
        return run()
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ServiceError("invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters.")
    body_hash = request_hash(data)
    try:
        with transaction.atomic():
            # A concurrent retry with the same key waits here for the first request to commit,
            # then meets its record (instead of racing it to the unique index).
            idempotency_lock(account_id=account.pk, key=key)
            response = run()
            if 200 <= response.status_code < 300 and not _record_insert(
                account=account, key=key, body_hash=body_hash, response=response
            ):
                raise _AlreadyRecorded
    except _AlreadyRecorded:
        return _replay(_recorded(account=account, key=key), body_hash)
    except ServiceError:
        existing = _recorded(account=account, key=key)
        if existing is None:
            raise
        return _replay(existing, body_hash)
    except IntegrityError:
        # Without the lock (SQLite) a concurrent request with the same key may win the unique
        # index; everything this one did is rolled back.
        existing = _recorded(account=account, key=key)
        if existing is None:
            raise
        return _replay(existing, body_hash)
    return response
