"""Idempotency-Key: the same key and body replay the first response; another body is a 409."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from django.db import IntegrityError, transaction
from rest_framework.response import Response

from marketplace.models import Account, IdempotencyRecord
from marketplace.services import ServiceError

MAX_KEY_LENGTH = 128


def request_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


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
    existing = IdempotencyRecord.objects.filter(account=account, key=key).first()
    if existing is not None:
        return _replay(existing, body_hash)
    try:
        with transaction.atomic():
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
        # A concurrent request with the same key won; everything this one did is rolled back.
        existing = IdempotencyRecord.objects.filter(account=account, key=key).first()
        if existing is None:
            raise
        return _replay(existing, body_hash)
    return response
