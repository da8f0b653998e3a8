"""The worked example of conftest.worked_example, computed by hand from its docstring.

Columns: group, contracts, tokens traded, tokens delivered, delivery ratio, gross value, fees,
refunds to buyers, provider payout, overage tokens. "D1"/"D2" stand for the two delivery days.
"""

from decimal import Decimal as D

M = 1_000_000

DAY = [
    # c1 + c2 + c3: 14M / 19M = 0.73684 -> 0.7368; value 17.00 + 10.50 + 20.00;
    # fees 0.03 + 0.02 + 0.03; refunds 3.00 + 0.00 + 12.02; payout 16.99 + 10.49 + 19.99
    ("D1", 3, 19 * M, 14 * M, D("0.7368"), D("47.50"), D("0.08"), D("15.02"), D("47.47"), 2 * M),
    ("D2", 1, 20 * M, 20 * M, D("1.0000"), D("30.00"), D("0.05"), D("0.00"), D("29.98"), M // 2),
]
PROVIDER = [
    # p1: c1 + c2. 13/15 = 0.86667
    ("p1", 2, 15 * M, 13 * M, D("0.8667"), D("27.50"), D("0.05"), D("3.00"), D("27.48"), 2 * M),
    # p2: c3 + c4. 21/24 = 0.875
    ("p2", 2, 24 * M, 21 * M, D("0.8750"), D("50.00"), D("0.08"), D("12.02"), D("49.97"), M // 2),
]
BUYER = [
    # b1: c1 + c3. 9/14 = 0.642857 -> 0.6429
    ("b1", 2, 14 * M, 9 * M, D("0.6429"), D("37.00"), D("0.06"), D("15.02"), D("36.98"), 0),
    # b2: c2 + c4
    ("b2", 2, 25 * M, 25 * M, D("1.0000"), D("40.50"), D("0.07"), D("0.00"), D("40.47"), 2 * M + M // 2),
]
TIER = [
    # frontier sorts before standard (tier sort order); frontier = c3 only
    ("frontier", 1, 4 * M, 1 * M, D("0.2500"), D("20.00"), D("0.03"), D("12.02"), D("19.99"), 0),
    # c1 + c2 + c4: 33/35 = 0.942857 -> 0.9429
    ("standard", 3, 35 * M, 33 * M, D("0.9429"), D("57.50"), D("0.10"), D("3.00"), D("57.46"), 2 * M + M // 2),
]
REGION = [
    ("cn-west-1", 3, 35 * M, 33 * M, D("0.9429"), D("57.50"), D("0.10"), D("3.00"), D("57.46"), 2 * M + M // 2),
    ("us-east-1", 1, 4 * M, 1 * M, D("0.2500"), D("20.00"), D("0.03"), D("12.02"), D("19.99"), 0),
]
# 34/39 = 0.871795 -> 0.8718; payout 77.50 - seller fees 0.05 = 77.45
TOTAL = ("Total", 4, 39 * M, 34 * M, D("0.8718"), D("77.50"), D("0.13"), D("15.02"), D("77.45"), 2 * M + M // 2)

BY_GROUP = {"day": DAY, "provider": PROVIDER, "buyer": BUYER, "tier": TIER, "region": REGION}


def expected(group_by: str, d1, d2) -> list[tuple]:
    """The rows of a grouping, with D1/D2 replaced by the example's delivery days."""
    days = {"D1": d1.isoformat(), "D2": d2.isoformat()}
    return [(days.get(r[0], r[0]), *r[1:]) for r in BY_GROUP[group_by]]
