"""Hypothesis over every URL the resolver knows (tests/security/routes.py, admin aside: its
forms are covered by tests/admin): API endpoints and web pages, GET and POST, path arguments,
query parameters and form or JSON bodies filled with generated dates, numbers and strings
(NUL, CJK, huge, exponent forms). No answer is a 5xx, and a 4xx writes nothing (row counts
of the main tables unchanged).

Bounded: FUZZ_URL_EXAMPLES examples (default 200) over all routes, about a minute on SQLite.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.models import Account, ApiKey, IdempotencyRecord, Order, Trade
from metering.models import LedgerEntry, UsageEvent
from pricing.services import instrument_match
from tests import factories
from tests.security.routes import all_routes
from tests.web.conftest import member, otp_verified

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FUZZ_URL_EXAMPLES", "200"))
ROUTES = [r for r in all_routes() if "static" not in r.route and "schema" not in r.route and "docs" not in r.route]
# Every parameter and field name the views read (query, form and JSON), so generated values
# reach the parsers rather than being ignored.
NAMES = [
    "since", "until", "from", "to", "interval", "depth", "side", "quantity", "price", "tier", "region", "day",
    "date_from", "date_to", "status", "instrument", "kind", "account", "hardware", "role", "delivery_date",
    "cursor", "quantity_mtok", "time_in_force", "allowed_hardware", "client_order_id", "name", "scopes", "token",
    "account_name", "username", "password1", "password2", "events", "amount", "next", "contract",
]

dates = st.one_of(
    st.dates().map(str),
    st.builds("{}-{:02d}-{:02d}".format, st.integers(0, 99999), st.integers(0, 99), st.integers(0, 99)),
    st.sampled_from(["2026-02-30", "9999-12-31", "0001-01-01", "2026-11-26T00:00:00+25:00",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "2026-11-26T10:00:00Z"]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["1e13", "1e30", "99999999999999999999", "1e999999999", "1e-999999999", "-0", "NaN",
                     "Infinity", "0.000000001", "1_000", "1,5", "0x10", str(2**63), str(2**64)]),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)
strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["次元科技", "\x00", "a\x00b", "x" * 5000, "standard:cn-west-1:9999-12-31", "buy", "sell",
                     "gtc", "ioc", "h100", "read,trade", "'; DROP TABLE x; --", "<script>", "../.."]),
)
values = st.one_of(dates, numbers, strings)
params = st.dictionaries(st.sampled_from(NAMES), values, max_size=4)


@pytest.fixture
def world(catalog):
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    account = factories.AccountFactory(is_buyer=True, is_provider=True)
    counterparty = factories.AccountFactory(is_buyer=True, is_provider=True)
    for a in (account, counterparty):
        factories.fund(a, Decimal("100000.00"))
    factories.place(account, inst, "sell", 2, "1.00")
    factories.place(counterparty, inst, "buy", 2, "1.00")
    instrument_match(instrument_id=inst.pk)
    order = factories.place(account, inst, "buy", 1, "0.50")
    user = member(account)
    _, raw = factories.api_key(account, ("read", "trade", "meter"))
    return {"instrument": inst, "order": order, "user": user, "raw": raw, "account": account}


def counts() -> tuple:
    return tuple(
        m.objects.count() for m in (Account, ApiKey, IdempotencyRecord, Order, Trade, LedgerEntry, UsageEvent)
    )


def _path(route, world, path_values: dict) -> str:
    def value(m):
        name = m.group(1)
        if name in path_values:
            return str(path_values[name])
        return str({"symbol": world["instrument"].symbol, "order_id": world["order"].pk}.get(name, "1"))

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", value, route.route)


path_args = st.fixed_dictionaries(
    {},
    optional={
        "symbol": st.one_of(st.sampled_from(["standard:cn-west-1:9999-12-31", "a:b:2026-02-30", "次元:x:y"]), strings),
        "order_id": st.one_of(st.integers(0, 2**70), st.just(-1)),
        "key_id": st.integers(0, 2**70),
        "slug": strings,
    },
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from(ROUTES),
    method=st.sampled_from(["get", "post"]),
    query=params,
    body=params,
    path_values=path_args,
    as_json=st.booleans(),
)
def test_no_url_answers_5xx_and_a_refusal_writes_nothing(world, route, method, query, body, path_values, as_json):
    path = _path(route, world, {k: v for k, v in path_values.items() if "/" not in str(v) and "?" not in str(v)})
    client = Client(HTTP_AUTHORIZATION=f"Bearer {world['raw']}") if route.route.startswith("api/") else Client()
    if not route.route.startswith("api/"):
        client.force_login(world["user"])
        otp_verified(client, world["user"])
    before = counts()
    if method == "get":
        response = client.get(path, query)
    elif as_json or route.route.startswith("api/"):
        response = client.post(path + "?" + "&".join(f"{k}=1" for k in query), body, content_type="application/json")
    else:
        response = client.post(path, body)
    assert response.status_code < 500, (method, path, query, body, response.status_code, response.content[:500])
    if 400 <= response.status_code < 500:
        assert counts() == before, (method, path, query, body, response.status_code)
