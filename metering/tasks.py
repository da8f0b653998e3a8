"""Celery tasks of settlement; each calls one service.

`settle_due` (periodic, beat) fans out one `settle_instrument` per due instrument, so several
workers settle several instruments at once. Both are acks_late: a worker lost mid-task leaves
the message to be redelivered, and the re-run settles only what the lost run did not commit.
"""

from __future__ import annotations

from celery import shared_task

from marketplace.db_errors import retry_transient

from . import settlement


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def settle_due() -> dict:
    ids = settlement.instruments_due()
    for instrument_id in ids:
        settle_instrument.delay(instrument_id)
    return {"enqueued": len(ids)}


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def settle_instrument(instrument_id: int) -> dict:
    return retry_transient(lambda: settlement.instrument_settle(instrument_id=instrument_id)).as_dict()
