from __future__ import annotations

from decimal import Decimal

from marketplace.models import Account

from .models import LedgerAccount


def balances_get(*, account: Account) -> dict[str, Decimal]:
    out = {k: Decimal("0.00") for k in ("available", "escrow", "owed")}
    for kind, balance in LedgerAccount.objects.filter(owner=account).values_list("kind", "balance"):
        out[kind] = balance
    return out
