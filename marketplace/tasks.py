from celery import shared_task

from . import services
from .db_errors import retry_transient


@shared_task(ignore_result=True)
def roll_instruments() -> dict:
    report = retry_transient(services.instruments_roll)
    return {"created": report.created, "closed": report.closed, "expired_orders": report.expired_orders}


@shared_task(ignore_result=True)
def simulate_demo_market() -> dict:
    """A tick of the live demo market (README "The demo market"); only with DEMO_SIMULATION."""
    from django.conf import settings

    from .simulation import demo_simulation_tick

    if not settings.DEMO_SIMULATION:
        return {"skipped": "DEMO_SIMULATION is off"}
    # Not retried as a whole: a tick is many small transactions, and the next tick comes soon.
    report = demo_simulation_tick()
    return {"placed": report.placed, "cancelled": report.cancelled, "usage_events": report.usage_events}
