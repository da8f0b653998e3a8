"""One process of the ledger stress test (tests/metering/test_ledger_deadlocks.py): random
placements, cancels, matches, closes and settlements against the test database, as a client
would call the services. Prints one JSON line: counts of outcomes and any unexpected errors
(a deadlock or serialization failure reaching the caller is one).

    python -m tests.metering.ledger_stress SEED OPERATIONS ACCOUNT_IDS OPEN_IDS DUE_IDS
"""

from __future__ import annotations

import json
import os
import random
import sys
import traceback
from collections import Counter
from decimal import Decimal


def main(seed: int, operations: int, account_ids: list[int], open_ids: list[int], due_ids: list[int]) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import pricing.tasks
    from marketplace import services
    from marketplace.models import LIVE_STATUSES, Account, Instrument, Order
    from metering.settlement import instrument_settle
    from pricing.services import instrument_match

    pricing.tasks.enqueue_match = lambda instrument_id: None  # this process matches itself
    rng = random.Random(seed)
    accounts = list(Account.objects.filter(pk__in=account_ids))
    outcomes: Counter = Counter()
    errors: list[str] = []
    for _ in range(operations):
        op = rng.choices(["place", "cancel", "match", "close", "settle"], weights=[8, 4, 3, 1, 1])[0]
        try:
            if op == "place":
                account = rng.choice(accounts)
                inst = Instrument.objects.get(pk=rng.choice(open_ids))
                side = "sell" if account.is_provider and not account.is_buyer else "buy"
                services.order_place(
                    account=account, instrument=inst, side=side, quantity=inst.lot_size * rng.randint(1, 3),
                    price=Decimal(rng.choice(["1.40", "1.50", "1.60"])), hardware="h100" if side == "sell" else None,
                )
            elif op == "cancel":
                live = list(Order.objects.filter(status__in=LIVE_STATUSES).values_list("pk", "account_id")[:50])
                if live:
                    order_id, account_id = rng.choice(live)
                    services.order_cancel(account=Account.objects.get(pk=account_id), order_id=order_id)
            elif op == "match":
                instrument_match(instrument_id=rng.choice(open_ids + due_ids))
            elif op == "close":
                services.instrument_close(instrument_id=rng.choice(due_ids))
            else:
                instrument_settle(instrument_id=rng.choice(due_ids), chunk_contracts=2)
            outcomes[f"{op}:ok"] += 1
        except services.ServiceError as exc:
            outcomes[f"{op}:{exc.code}"] += 1
        except Exception as exc:  # what must never reach a client: deadlock, serialization, 500s
            outcomes[f"{op}:ERROR"] += 1
            errors.append(f"{op}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
    return {"outcomes": dict(outcomes), "errors": errors}


if __name__ == "__main__":
    seed, ops = int(sys.argv[1]), int(sys.argv[2])
    ids = [[int(x) for x in arg.split(",") if x] for arg in sys.argv[3:6]]
    print(json.dumps(main(seed, ops, *ids)))
