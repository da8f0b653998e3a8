from celery import shared_task

from . import services
from .db_errors import retry_transient


@shared_task(ignore_result=True)
def roll_instruments() -> dict:
    report = retry_transient(services.instruments_roll)
    return {"created": report.created, "closed": report.closed, "expired_orders": report.expired_orders}
