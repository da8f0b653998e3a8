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


def idempotent(*, key: str | None, account: Account, data, run: Callable[[], Response]) -> Response:
    """Run `run` once per (account, key); it must do its writes in the caller's transaction."""
    if key is None:
        return run()
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ServiceError("invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters.")
    body_hash = request_hash(data)
    try:
        with transaction.atomic():
            # A concurrent retry with the same key waits here for the first request to commit,
            # then finds its record and replays it (instead of racing it to the unique index).
            idempotency_lock(account_id=account.pk, key=key)
            existing = IdempotencyRecord.objects.filter(account=account, key=key).first()
            if existing is not None:
                return _replay(existing, body_hash)
            response = run()
            if 200 <= response.status_code < 300:
                IdempotencyRecord.objects.create(
                    account=account,
                    key=key,
                    request_hash=body_hash,
                    response_status=response.status_code,
                    response_body=json.loads(json.dumps(response.data, default=str)),
                )
    except IntegrityError:
        # Without the lock (SQLite) a concurrent request with the same key may win the unique
        # index; everything this one did is rolled back.
        existing = IdempotencyRecord.objects.filter(account=account, key=key).first()
        if existing is None:
            raise
        return _replay(existing, body_hash)
    return response
