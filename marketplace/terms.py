"""Contract terms frozen when an order is placed and when it trades (PRODUCT.md §3).

Everything that prices or routes a contract is copied onto the order at placement: the maker and
taker fee rates, the tier's unused-capacity share and token weights, and a buy's allowed hardware
as Hardware ids. A trade takes each side's own fee rate (maker or taker, from its own order) and
the tier terms of the resting (maker) order, as it takes the resting order's price: the order
that waited in the book is the one whose terms were public. Settlement and usage ingestion read
only these frozen copies, so an edit to the catalog or to MAKER_FEE_BPS / TAKER_FEE_BPS applies to
orders placed after it and never changes a contract already made.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from metering import money

from .models import Instrument, Side

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderTerms:
    maker_fee_bps: int
    taker_fee_bps: int
    unused_capacity_share: Decimal
    output_token_weight: Decimal
    cached_input_weight: Decimal

    @property
    def max_fee_bps(self) -> int:
        return max(self.maker_fee_bps, self.taker_fee_bps)

    def as_fields(self) -> dict:
        return {
            "maker_fee_bps": self.maker_fee_bps,
            "taker_fee_bps": self.taker_fee_bps,
            "unused_capacity_share": self.unused_capacity_share,
            "output_token_weight": self.output_token_weight,
            "cached_input_weight": self.cached_input_weight,
        }


def order_terms_current(*, instrument: Instrument) -> OrderTerms:
    """The terms a new order on `instrument` freezes now: today's fee rates and tier."""
    maker, taker = money.fee_rates()
    tier = instrument.tier
    return OrderTerms(
        maker_fee_bps=maker,
        taker_fee_bps=taker,
        unused_capacity_share=tier.unused_capacity_share,
        output_token_weight=tier.output_token_weight,
        cached_input_weight=tier.cached_input_weight,
    )


def order_max_fee_bps(row: Mapping) -> int:
    """The highest fee an order (model or matcher row) can pay: what its reservation covers."""
    return max(row["maker_fee_bps"], row["taker_fee_bps"])


def trade_fee_bps(*, buy_row: Mapping, sell_row: Mapping, aggressor: str) -> tuple[int, int]:
    """(buyer bps, seller bps) of a fill: each side pays its own order's frozen maker or taker rate."""
    buyer_is_maker = aggressor == Side.SELL
    buyer = buy_row["maker_fee_bps"] if buyer_is_maker else buy_row["taker_fee_bps"]
    seller = sell_row["taker_fee_bps"] if buyer_is_maker else sell_row["maker_fee_bps"]
    return buyer, seller


def trade_tier_terms(*, maker_row: Mapping) -> tuple[Decimal, Decimal, Decimal]:
    """(unused_capacity_share, output_token_weight, cached_input_weight) a trade freezes."""
    return maker_row["unused_capacity_share"], maker_row["output_token_weight"], maker_row["cached_input_weight"]


def allowed_hardware_codes(ids: Iterable[int], codes_by_id: Mapping[int, str]) -> frozenset[str]:
    """The current codes of a buy's frozen hardware ids (the engine matches by code, per batch)."""
    # A deleted hardware id keeps a code nothing has, so the set never widens to "any".
    return frozenset(codes_by_id.get(i, f"#{i}") for i in ids)


def buy_escrow_open(row: Mapping, *, filled: int) -> Decimal:
    """What a live buy order (model or matcher row) holds in escrow once `filled` tokens filled."""
    return money.order_escrow_open(
        reserved=row["reserved"], quantity=row["quantity"], filled=filled, price=row["price"],
        max_fee_bps=order_max_fee_bps(row),
    )  # fmt: skip


def buy_fill_escrow(
    row: Mapping, *, filled_before: int, quantity: int, price: Decimal, buyer_fee_bps: int
) -> money.FillEscrow:
    """Split a fill of buy order `row` into the contract's escrow and the release (money.fill_escrow).

    A shortfall (an order that reserved less than the rule needs, e.g. under an older rule) is
    not an error: the contract keeps what the order holds, settlement never charges the buyer
    more than that, and the book carries on; it is logged for the operator.
    """
    split = money.fill_escrow(
        reserved=row["reserved"],
        order_quantity=row["quantity"],
        limit=row["price"],
        max_fee_bps=order_max_fee_bps(row),
        filled_before=filled_before,
        quantity=quantity,
        price=price,
        buyer_fee_bps=buyer_fee_bps,
    )
    if split.shortfall:
        log.warning(
            "escrow shortfall: buy order %s reserved %s, short by %s; its contract holds %s",
            row["id"], row["reserved"], split.shortfall, split.contract,
        )  # fmt: skip
    return split
