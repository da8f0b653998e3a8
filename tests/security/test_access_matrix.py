"""The authorization matrix: every API endpoint and every web page, enumerated from the URL
resolver (so endpoints added later are covered without editing this file), against every kind
of caller. Exactly the right callers succeed; every refusal changes nothing.

API callers: anonymous, a revoked key, a key of the owner without the needed scope, a key of
another account with every scope, and the owner's key with just the needed scope. The needed
scope is read from the view's own permissions; the policy checked here is that every endpoint
is either public market data (GET only) or names a scope, and that an object of one account
(an order, a contract, an API key) answers 404 to every other account.

Web callers: anonymous, a request carrying only a valid API key (keys never open a web
session), a user of another account, and a user of the owner account. Admin pages: anonymous,
an ordinary user, staff.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from marketplace import services
from marketplace.models import ApiKey, Membership, Order, Trade
from metering.funding import funding_withdrawal_request
from metering.models import FundingRequest, LedgerEntry, UsageEvent
from pricing.services import instrument_match
from tests import factories
from tests.security.ownership import NOT_LISTS, OWN_IDS, listed_ids
from tests.security.routes import Route, api_operations, required_scope, web_pages
from tests.web.conftest import otp_verified

pytestmark = pytest.mark.django_db

# URL kwargs naming an object that belongs to one account: another account gets 404.
OWNED_KWARGS = {"order_id", "key_id", "contract_id", "trade_id", "settlement_id", "event_id", "request_id"}
# Web pages anyone may open; every other page needs a signed-in user with an account.
PUBLIC_PAGES = {
    "web:markets", "web:instrument", "web:order_preview", "web:login", "web:signup",
    # a forgotten password: a signed-out user asks for a link and follows it
    "web:password_reset", "web:password_reset_done", "web:password_reset_confirm", "web:password_reset_complete",
}  # fmt: skip
# A marker only the owner's data contains: another account must never see it.
MARKER = "owner-marker-7f3a9c"


# --- the world the matrix runs in -----------------------------------------------------------


@pytest.fixture
def world(catalog, settings):
    settings.SANDBOX_FUNDING = True  # the sandbox-credit endpoint answers like any other
    inst = factories.open_instrument(tier="standard", region="cn-west-1")
    owner = factories.AccountFactory(name=f"Owner {MARKER}", slug=f"owner-{MARKER}", is_buyer=True, is_provider=True)
    other = factories.AccountFactory(is_buyer=True, is_provider=True)
    counterparty = factories.AccountFactory(is_buyer=True, is_provider=True)
    for acct in (owner, other, counterparty):
        factories.fund(acct, Decimal("100000.00"))
    # Two contracts of the owner (as buyer and as provider) and a resting order of its own.
    factories.place(counterparty, inst, "sell", 2, "1.00")
    factories.place(owner, inst, "buy", 2, "1.00")
    factories.place(owner, inst, "sell", 1, "1.50")
    factories.place(counterparty, inst, "buy", 1, "1.50")
    instrument_match(instrument_id=inst.pk)
    # The other account has a fill and a resting order of its own, so a list that leaks shows
    # rows of the wrong account by id (see assert_only_own_rows).
    factories.place(counterparty, inst, "sell", 1, "1.20")
    factories.place(other, inst, "buy", 1, "1.20")
    factories.place(other, inst, "sell", 1, "5.00")
    instrument_match(instrument_id=inst.pk)
    assert Trade.objects.filter(buyer=other).exists()
    resting = factories.place(owner, inst, "buy", 1, "0.50", client_order_id=MARKER)
    instrument_match(instrument_id=inst.pk)
    contract = Trade.objects.filter(buyer=owner).first()
    assert contract is not None and Trade.objects.filter(seller=owner).exists()

    User = get_user_model()
    owner_user = User.objects.create_user("owner-user", password="pw-owner-123!")
    other_user = User.objects.create_user("other-user", password="pw-other-123!")
    Membership.objects.create(account=owner, user=owner_user, role=Membership.Role.OWNER)
    Membership.objects.create(account=other, user=other_user, role=Membership.Role.OWNER)
    spare_key, _ = services.api_key_create(account=owner, scopes=["read"], name="spare")
    withdrawal = funding_withdrawal_request(account=owner, amount=Decimal("1.00"), reference=MARKER)
    funding_withdrawal_request(account=other, amount=Decimal("2.00"))  # the other's row, never shown
    return {
        "funding_request": withdrawal,
        "instrument": inst,
        "owner": owner,
        "other": other,
        "owner_user": owner_user,
        "other_user": other_user,
        "order": resting,
        "contract": contract,
        "spare_key": spare_key,
    }


def fill_route(route: Route, world) -> str:
    values = {
        "symbol": world["instrument"].symbol,
        "order_id": world["order"].pk,
        "contract_id": world["contract"].pk,
        "trade_id": world["contract"].pk,
        "key_id": world["spare_key"].pk,
        "request_id": world["funding_request"].pk,
        # a password-reset link that is not valid: the page says so, to anyone
        "uidb64": "MQ",
        "token": "set-password",
    }
    missing = [k for k in route.kwargs if k not in values]
    assert not missing, f"{route}: teach test_access_matrix.fill_route a value for {missing}"
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route.route)
    return "/" + path


def key_client(account, scopes, *, revoked: bool = False) -> APIClient:
    key, raw = services.api_key_create(account=account, scopes=scopes)
    if revoked:
        services.api_key_revoke(key=key)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def state() -> tuple:
    return (
        sorted(Order.objects.values_list("id", "status", "filled_quantity")),
        Trade.objects.count(),
        LedgerEntry.objects.count(),
        UsageEvent.objects.count(),
        sorted(ApiKey.objects.values_list("id", "revoked_at")),
        sorted(FundingRequest.objects.values_list("id", "status")),
    )


def body_for(route: Route, method: str, world) -> dict | None:
    if method != "post":
        return None
    if route.name == "api:orders":
        return {"instrument": world["instrument"].symbol, "side": "buy", "quantity": 1_000_000, "price": "0.40"}
    if route.name in FUNDING_CREATE:
        return {"amount": "1.00"}
    if route.name == "metering:usage":
        contract = Trade.objects.filter(seller=world["owner"]).first()
        return {
            "events": [
                {
                    "event_id": "matrix-1",
                    "buyer": contract.buyer.slug,
                    "contract": contract.pk,
                    "timestamp": contract.instrument.delivery_start.isoformat().replace("+00:00", "Z"),
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                }
            ]
        }
    return {}


FUNDING_CREATE = ("metering:funding-deposits", "metering:funding-withdrawals", "metering:funding-sandbox-credit")

# Query strings some GET endpoints need to answer 200 (market data for a given size/hardware).
QUERIES = {
    "pricing:instrument-quote": "?side=buy&quantity=1000000",
    "pricing:instrument-suggested-price": "?hardware=h100",
}


def text(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def call(client, method: str, path: str, body) -> object:
    fn = getattr(client, method)
    return fn(path, body, format="json") if body is not None else fn(path)


def assert_error_shape(response, status: int) -> None:
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:300])
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["message"]


# --- the API matrix -------------------------------------------------------------------------


@pytest.mark.parametrize("route, method", api_operations(), ids=lambda v: str(v))
def test_api_endpoint_admits_exactly_the_right_callers(world, route, method):
    scope = required_scope(route, method)
    owned = any(k in OWNED_KWARGS for k in route.kwargs)
    if scope is None:
        assert method == "get" and not owned, f"{method.upper()} {route} is public but is not market data"
    path = fill_route(route, world) + (QUERIES.get(route.name, "") if method == "get" else "")
    body = body_for(route, method, world)
    all_scopes = ["read", "trade", "meter", "funding"]

    # Anonymous and a revoked key: 401 (a bad key is never treated as anonymous).
    callers = [("revoked key", key_client(world["owner"], all_scopes, revoked=True), 401)]
    if scope is not None:
        callers.insert(0, ("anonymous", APIClient(), 401))
        callers.append(("key without scope", key_client(world["owner"], [s for s in all_scopes if s != scope]), 403))
    for who, client, status in callers:
        before = state()
        r = call(client, method, path, body)
        assert_error_shape(r, status)
        if status == 401:
            assert r.has_header("WWW-Authenticate"), who
        assert state() == before, f"{who} changed something with {method.upper()} {path}"

    # Another account, with every scope: its own objects only.
    other = key_client(world["other"], all_scopes)
    before = state()
    r = call(other, method, path, body)
    if owned:
        assert_error_shape(r, 404)
        assert state() == before, f"another account changed something with {method.upper()} {path}"
    elif route.name == "metering:usage":
        # Usage for a contract the caller did not sell is refused and records nothing.
        assert r.status_code in (200, 400, 403, 404), r.status_code
        assert UsageEvent.objects.count() == before[3]
    else:
        assert r.status_code < 500
    assert MARKER not in text(r), f"{path} shows another account's data"
    if method == "get" and scope is not None and not owned:
        # A private list: by ids, the other account sees only rows it owns (it owns none of
        # the owner's orders, fills, contracts or ledger entries).
        assert r.status_code == 200, (r.status_code, r.content[:300])
        assert_only_own_rows(route, r, world["other"], world["owner"])

    # The owner's key with only the needed scope (read for public endpoints) succeeds.
    right = key_client(world["owner"], [scope or "read"])
    r = call(right, method, path, body)
    assert r.status_code not in (401, 403) and r.status_code < 500, (r.status_code, r.content[:300])
    if scope is not None:
        # Private data: the owner's own object is found and the call succeeds.
        assert r.status_code != 404, r.content[:300]
        if body is None or route.name in ("api:orders", "metering:usage", *FUNDING_CREATE):
            assert 200 <= r.status_code < 300, (r.status_code, r.content[:300])
    if route.name in ("api:orders", "api:order") and method == "get":
        assert MARKER in text(r), "the owner must see its own order"
    if method == "get" and scope is not None and not owned:
        assert_only_own_rows(route, r, world["owner"], world["other"], complete=True)


def assert_only_own_rows(route: Route, response, caller, stranger, *, complete: bool = False) -> None:
    """The rows of a private list are the caller's own, by id; `complete`: all of them."""
    body = response.json()
    if route.name in NOT_LISTS:
        assert body["account"] == caller.slug, body
        return
    assert route.name in OWN_IDS, f"teach tests/security/ownership.OWN_IDS which rows {route} lists"
    listed = set(listed_ids(body))
    mine, theirs = OWN_IDS[route.name](caller), OWN_IDS[route.name](stranger)
    assert theirs, f"the world must give {stranger.slug} rows that {route} could leak"
    assert not listed & theirs, f"{route} shows {caller.slug} rows of {stranger.slug}: {sorted(listed & theirs)}"
    assert listed <= mine, f"{route} shows rows that are not {caller.slug}'s: {sorted(listed - mine)}"
    if complete:
        assert listed == mine, f"{route} hides rows of {caller.slug}: {sorted(mine - listed)}"


# The REST surface PRODUCT.md §6 promises today (paths as the client sees them).
DOCUMENTED = {
    ("/api/v1/tiers", "get"), ("/api/v1/hardware", "get"), ("/api/v1/regions", "get"),
    ("/api/v1/instruments", "get"), ("/api/v1/instruments/{symbol}", "get"),
    ("/api/v1/instruments/{symbol}/book", "get"), ("/api/v1/instruments/{symbol}/trades", "get"),
    ("/api/v1/instruments/{symbol}/candles", "get"), ("/api/v1/instruments/{symbol}/quote", "get"),
    ("/api/v1/orders", "post"), ("/api/v1/orders", "get"), ("/api/v1/orders/{order_id}", "get"),
    ("/api/v1/orders/{order_id}/cancel", "post"), ("/api/v1/trades", "get"), ("/api/v1/contracts", "get"),
    ("/api/v1/usage", "post"), ("/api/v1/balances", "get"), ("/api/v1/ledger", "get"), ("/api/v1/index", "get"),
}  # fmt: skip


def test_every_api_endpoint_is_in_the_matrix():
    """The matrix's enumerator against two independent lists: the OpenAPI schema that
    drf-spectacular generates (every operation a client can see) and PRODUCT.md's table."""
    from drf_spectacular.generators import SchemaGenerator

    in_matrix = {("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.route), m) for r, m in api_operations()}
    schema = SchemaGenerator().get_schema(request=None, public=True)
    in_schema = {(path, m) for path, ops in schema["paths"].items() for m in ops if m in ("get", "post", "put", "patch", "delete")}
    assert in_schema, "the schema lists no operation"
    assert in_schema <= in_matrix, f"operations the matrix does not check: {sorted(in_schema - in_matrix)}"
    assert DOCUMENTED <= in_matrix, f"documented operations the matrix does not check: {sorted(DOCUMENTED - in_matrix)}"


# --- the web matrix -------------------------------------------------------------------------


def _login_redirect(r) -> bool:
    return r.status_code == 302 and "/login/" in r["Location"]


@pytest.mark.parametrize("route", web_pages(), ids=str)
def test_web_page_admits_exactly_the_right_users(world, route, client, settings):
    if route.name == "web:logout":
        assert client.get("/logout/").status_code in (302, 405)
        return
    path = fill_route(route, world)
    owned = any(k in OWNED_KWARGS for k in route.kwargs)
    public = route.name in PUBLIC_PAGES

    from django.test import Client

    owner = Client()
    owner.force_login(world["owner_user"])
    method = "get" if owner.get(path).status_code != 405 else "post"

    # Anonymous, and a request with only a valid API key: the same (keys open no session).
    _, raw = services.api_key_create(account=world["owner"], scopes=["read", "trade", "meter"])
    for who, c in (("anonymous", Client()), ("api key only", Client(HTTP_AUTHORIZATION=f"Bearer {raw}"))):
        before = state()
        r = getattr(c, method)(path)
        if public:
            assert r.status_code in (200, 302, 405), (who, r.status_code)
            assert not _login_redirect(r), who
        else:
            assert _login_redirect(r), (who, r.status_code)
        assert state() == before, f"{who} changed something with {method.upper()} {path}"
        assert MARKER not in text(r), f"{who} sees the owner's data on {path}"

    other = Client()
    other.force_login(world["other_user"])
    before = state()
    r = getattr(other, method)(path)
    if owned:
        assert r.status_code == 404, r.status_code
        assert state() == before, f"another account changed something with {method.upper()} {path}"
    else:
        assert r.status_code < 500 and not _login_redirect(r)
    assert MARKER not in text(r), f"another account sees the owner's data on {path}"

    r = getattr(owner, method)(path)
    # 400: a form posted empty was refused on its content, past the access checks.
    assert r.status_code in ((200, 302) if method == "get" or owned else (200, 302, 400)), r.status_code
    assert not _login_redirect(r)
    if route.name == "web:order_cancel":
        world["order"].refresh_from_db()
        assert world["order"].status == "cancelled"
    if route.name == "web:api_key_revoke":
        world["spare_key"].refresh_from_db()
        assert world["spare_key"].revoked_at is not None
    if route.name == "web:orders":
        assert MARKER in text(r), "the owner must see its own order"


def _admin_paths() -> list[str]:
    paths = ["/admin/"]
    for model in admin.site._registry:
        paths.append(f"/admin/{model._meta.app_label}/{model._meta.model_name}/")
    return paths


def test_admin_pages_admit_only_staff(world):
    from django.test import Client

    staff = get_user_model().objects.create_superuser("staff", password="pw-staff-123!")
    staff_client, member = Client(), Client()
    staff_client.force_login(staff)
    otp_verified(staff_client, staff)  # admin requires two-factor sign-in of staff
    member.force_login(world["owner_user"])
    _, raw = services.api_key_create(account=world["owner"], scopes=["read", "trade", "meter"])
    for path in _admin_paths():
        for who, c in (
            ("anonymous", Client()),
            ("member", member),
            ("api key", Client(HTTP_AUTHORIZATION=f"Bearer {raw}")),
        ):
            r = c.get(path)
            assert r.status_code == 302 and "/admin/login/" in r["Location"], (who, path, r.status_code)
        r = staff_client.get(path)
        assert r.status_code == 200, (path, r.status_code)
