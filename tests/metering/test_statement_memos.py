"""Statement lines speak a trader's language: the book's symbol, why money moved, what was charged."""

from __future__ import annotations

import pytest

from marketplace.services import order_cancel
from metering.models import LedgerTransaction
from metering.settlement import settlements_run_due
from metering.usage import usage_ingest
from pricing.services import instrument_match
from tests import factories
from tests.metering.builders import after_grace, event, spot_instrument

pytestmark = pytest.mark.django_db


def test_release_cancel_and_settlement_memos_name_the_book_and_the_amounts(catalog, buyer, provider):
    inst = spot_instrument(hours_left=1)
    factories.place(provider, inst, "sell", 2, "1.90")
    factories.place(buyer, inst, "buy", 2, "2.00")  # fills at 1.90: price improvement comes back
    instrument_match(instrument_id=inst.pk)
    match = LedgerTransaction.objects.filter(kind="match").latest("id")
    assert inst.symbol in match.memo and "price improvement" in match.memo
    assert "sequence" not in match.memo and f"instrument {inst.pk}" not in match.memo

    resting = factories.place(buyer, inst, "buy", 3, "1.00")
    instrument_match(instrument_id=inst.pk)
    order_cancel(account=buyer, order_id=resting.pk)
    cancel = LedgerTransaction.objects.get(key=f"cancel:{resting.pk}")
    assert cancel.memo == f"escrow of buy order #{resting.pk} back to available: cancelled, 3 Mtok unfilled on {inst.symbol}"

    usage_ingest(provider=provider, events=[event(buyer, inst, prompt=1_000_000)])
    settlements_run_due(now=after_grace(inst))
    settled = LedgerTransaction.objects.get(kind="settlement")
    assert settled.memo.startswith("settlement of contract #") and inst.symbol in settled.memo
    s = settled.settlement
    assert f"charged {s.value + s.buyer_fee} incl. fee {s.buyer_fee}; refund {s.refund}" in settled.memo
    assert f"provider paid {s.provider_payout}" in settled.memo

