"""Which rows an account owns, computed from the database: what its private lists must show."""

from __future__ import annotations

from django.db.models import Q

from marketplace.models import Order, Trade
from metering.models import FundingRequest, LedgerEntry


def own_orders(account) -> set[int]:
    return set(Order.objects.filter(account=account).values_list("id", flat=True))


def own_trades(account) -> set[int]:
    return set(Trade.objects.filter(Q(buyer=account) | Q(seller=account)).values_list("id", flat=True))


def own_ledger_entries(account) -> set[int]:
    return set(LedgerEntry.objects.filter(account__owner=account).values_list("id", flat=True))


def own_funding_requests(account) -> set[int]:
    return set(FundingRequest.objects.filter(account=account).values_list("id", flat=True))


# Private list endpoint (route name) -> the ids of the rows the caller owns.
OWN_IDS = {
    "api:orders": own_orders,
    "api:trades": own_trades,
    "metering:contracts": own_trades,
    "metering:ledger": own_ledger_entries,
    "metering:funding": own_funding_requests,
}
# Private GETs without an object id that are not lists of rows (checked by value).
NOT_LISTS = {"metering:balances"}


def listed_ids(body) -> list[int]:
    """The ids of the rows of one page of a list response."""
    return [row["id"] for row in body["results"]]
