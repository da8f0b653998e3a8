"""Celery tasks of the matching engine; each calls one service. Nothing imports this module:
services queue tasks by name through pricing.dispatch."""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.core.cache import cache
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from marketplace.db_errors import retry_transient
from marketplace.models import LIVE_STATUSES, Instrument, Order

from . import auction_runs, dispatch, matcher
from .models import CallAuction

log = logging.getLogger(__name__)

enqueue_match = dispatch.enqueue_match  # old import path, kept for callers outside this app


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def match_instrument(instrument_id: int) -> dict:
    cache.delete(dispatch.QUEUED_KEY.format(instrument_id))
    loads = matcher.resident_stats["loaded"]
    report = retry_transient(lambda: matcher.instrument_match(instrument_id=instrument_id))
    if report.more_pending:
        dispatch.enqueue_match(instrument_id)
    # Logged by the worker with the task's success line (operators and tests read "loads": how
    # often the resident book had to be read from the orders table).
    return {
        "instrument": instrument_id,
        "processed": report.processed,
        "trades": report.trades,
        "loads": matcher.resident_stats["loaded"] - loads,
    }


@shared_task(ignore_result=True)
def sweep() -> dict:
    """Re-enqueue matching of every open instrument with pending orders or cancels; close past
    ones. It sends to the shared queue, not to the instrument's owner: that is how a crashed
    worker's instruments are taken over (its own queue has no consumer until it is back)."""
    from marketplace.services import instrument_close

    now = timezone.now()
    closed = 0
    for inst_id in Instrument.objects.filter(
        delivery_end__lte=now, status__in=[Instrument.Status.OPEN, Instrument.Status.HALTED]
    ).values_list("id", flat=True):
        retry_transient(lambda inst_id=inst_id: instrument_close(instrument_id=inst_id, now=now))
        closed += 1
    waiting = Order.objects.filter(instrument=OuterRef("pk")).filter(
        Q(pending_match=True) | Q(cancel_requested_at__isnull=False, status__in=LIVE_STATUSES)
    )
    ids = list(
        Instrument.objects.filter(status=Instrument.Status.OPEN, delivery_end__gt=now)
        .filter(Exists(waiting))
        .exclude(call_auction__status=CallAuction.Status.COLLECTING)  # collecting, not lost
        .values_list("id", flat=True)
    )
    for inst_id in ids:
        dispatch.send_match(inst_id, routed=False)
    return {"enqueued": len(ids), "closed": closed}


@shared_task(ignore_result=True)
def auctions_run() -> dict:
    """Open tomorrow's day-ahead auctions; clear those whose gate has closed."""
    opened = retry_transient(auction_runs.auctions_open_due)
    cleared = retry_transient(auction_runs.auctions_clear_due)
    return {"opened": opened, "cleared": len(cleared)}


@shared_task(ignore_result=True)
def index_publish() -> dict:
    """Publish the Token Price Index of every tier for the days that still change."""
    from .index import index_publish as publish

    return {"published": len(publish())}


# --- the worker heartbeat that routing reads (pricing.dispatch) -------------------------------

_heartbeat_stop = threading.Event()


def _heartbeat_loop(hostname: str) -> None:
    while not _heartbeat_stop.is_set():
        try:
            dispatch.worker_heartbeat(hostname=hostname)
        except Exception:  # Redis down: the worker drops out of routing until it is back
            log.warning("match heartbeat failed", exc_info=True)
        _heartbeat_stop.wait(settings.MATCH_WORKER_HEARTBEAT_SECONDS)


@worker_ready.connect
def _start_heartbeat(sender=None, **kwargs) -> None:
    hostname = getattr(sender, "hostname", None)
    if hostname and settings.REDIS_URL:
        threading.Thread(target=_heartbeat_loop, args=(hostname,), daemon=True, name="match-heartbeat").start()


@worker_shutdown.connect
def _stop_heartbeat(sender=None, **kwargs) -> None:
    _heartbeat_stop.set()
    hostname = getattr(sender, "hostname", None)
    if hostname:
        try:
            dispatch.worker_gone(hostname=hostname)
        except Exception:
            pass
