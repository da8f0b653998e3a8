"""Celery tasks of the matching engine; each calls one service."""

from __future__ import annotations

import logging

from celery import shared_task
from django.core.cache import cache
from django.db.models import Exists, OuterRef
from django.utils import timezone

from marketplace.db_errors import retry_transient
from marketplace.models import Instrument, Order

from . import services
from .models import CallAuction

log = logging.getLogger(__name__)

# While this key exists a match task for the instrument is queued and not yet started, so
# more placements need not queue another one. It only saves work: the task deletes it before
# reading, and the sweep catches anything a lost key or lost task leaves behind.
_QUEUED_KEY = "match-queued:{}"


def enqueue_match(instrument_id: int) -> None:
    """Queue matching after a commit. Never raises: it runs in on_commit hooks after the order
    is already committed, so a Redis outage (cache or broker) must not turn into a 500 for an
    accepted order; the sweep matches whatever was not queued."""
    key = _QUEUED_KEY.format(instrument_id)
    try:
        if not cache.add(key, 1, timeout=10):
            return
    except Exception:  # cache (Redis) down: queue anyway; a duplicate task is harmless
        log.warning("cache unavailable; queueing match of instrument %s without de-duplication", instrument_id)
    try:
        match_instrument.delay(instrument_id)
    except Exception:  # broker down: the order is recorded; the sweep will match it
        try:
            cache.delete(key)
        except Exception:
            pass
        log.warning("broker unavailable; instrument %s left for the sweep", instrument_id, exc_info=True)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def match_instrument(instrument_id: int) -> dict:
    cache.delete(_QUEUED_KEY.format(instrument_id))
    report = retry_transient(lambda: services.instrument_match(instrument_id=instrument_id))
    if report.more_pending:
        enqueue_match(instrument_id)
    return {"processed": report.processed, "trades": report.trades}


@shared_task(ignore_result=True)
def sweep() -> dict:
    """Re-enqueue matching of every open instrument with pending orders; close past ones."""
    from marketplace.services import instrument_close

    now = timezone.now()
    closed = 0
    for inst_id in Instrument.objects.filter(
        delivery_end__lte=now, status__in=[Instrument.Status.OPEN, Instrument.Status.HALTED]
    ).values_list("id", flat=True):
        retry_transient(lambda inst_id=inst_id: instrument_close(instrument_id=inst_id, now=now))
        closed += 1
    pending = Order.objects.filter(instrument=OuterRef("pk"), pending_match=True)
    ids = list(
        Instrument.objects.filter(status=Instrument.Status.OPEN, delivery_end__gt=now)
        .filter(Exists(pending))
        .exclude(call_auction__status=CallAuction.Status.COLLECTING)  # collecting, not lost
        .values_list("id", flat=True)
    )
    for inst_id in ids:
        match_instrument.delay(inst_id)
    return {"enqueued": len(ids), "closed": closed}


@shared_task(ignore_result=True)
def auctions_run() -> dict:
    """Open tomorrow's day-ahead auctions; clear those whose gate has closed."""
    opened = retry_transient(services.auctions_open_due)
    cleared = retry_transient(services.auctions_clear_due)
    return {"opened": opened, "cleared": len(cleared)}


@shared_task(ignore_result=True)
def index_publish() -> dict:
    """Publish the Token Price Index of every tier for the days that still change."""
    from .index import index_publish as publish

    return {"published": len(publish())}
