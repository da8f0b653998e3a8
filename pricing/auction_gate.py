"""The day-ahead auction gate (PRODUCT.md §3): from gate closure until the clear has run, an
instrument takes no new orders and no cancels, so the book the clear prices is the book that
stood at the gate while the indicative price was public."""

from __future__ import annotations

import datetime as dt

from marketplace.services import ServiceError

from .models import CallAuction

GATE_CLOSED = "auction_gate_closed"


def auction_gate_check(*, instrument_id: int, now: dt.datetime, action: str) -> None:
    """Refuse `action` ("orders" or "cancels") with 409 auction_gate_closed if the instrument's
    call auction is past its gate and not yet cleared. Placement calls it before sequencing;
    cancellation calls it holding the instrument's matching lock, which the clear also takes, so
    a cancel that waited on a running clear sees it cleared and goes through."""
    gate = (
        CallAuction.objects.filter(instrument_id=instrument_id, status=CallAuction.Status.COLLECTING)
        .values_list("gate_closure_at", flat=True)
        .first()
    )
    if gate is not None and now >= gate:
        raise ServiceError(
            GATE_CLOSED,
            f"The day-ahead auction's gate closed at {gate.isoformat()}; {action} are refused until the "
            "auction has cleared, then continuous trading opens.",
            status=409,
        )
