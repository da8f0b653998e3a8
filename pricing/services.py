"""The old home of the matcher, kept as names only so existing call sites keep working.

The code lives in what it is: pricing.matcher (continuous matching and sequencing),
pricing.book_rows (order rows in and out of PostgreSQL), pricing.auction_runs (the call
auction's database side), pricing.dispatch (queueing matching) and metering.money (fee rates).
New code imports from those modules.
"""

from __future__ import annotations

from metering.money import fee_bps, max_fee_bps

from .auction_runs import (
    auction_clear,
    auction_gate_closure,
    auction_open,
    auctions_clear_due,
    auctions_open_due,
)
from .book_rows import auction_reference_price, book_top_refresh
from .book_rows import book_top_refresh as book_refresh_top
from .matcher import MatchReport, instrument_match, match_locked

__all__ = [
    "MatchReport",
    "auction_clear",
    "auction_gate_closure",
    "auction_open",
    "auction_reference_price",
    "auctions_clear_due",
    "auctions_open_due",
    "book_refresh_top",
    "book_top_refresh",
    "fee_bps",
    "instrument_match",
    "match_locked",
    "max_fee_bps",
]
