"""Funding requests: deposits and withdrawals asked for by participants and decided by staff.

A withdrawal holds its amount from the moment it is asked for; staff approval pays the hold out,
rejection or cancellation returns it; every decision happens once. Through every door: the
service, the API, admin and the web page.
"""

from __future__ import annotations

import threading
from decimal import Decimal as D

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.urls import reverse

from marketplace.services import ServiceError
from metering import funding
from metering.models import FundingRequest, LedgerAccount, LedgerEntry, LedgerTransaction
from metering.selectors import balances_by_currency, balances_get
from tests import factories
from tests.conftest import api_client_for
from tests.invariants import assert_invariants
from tests.web.conftest import logged_in, member, otp_verified

pytestmark = pytest.mark.django_db


def _hold(account) -> D:
    row = LedgerAccount.objects.filter(owner=account, kind="withdrawal_hold").first()
    return row.balance if row else D("0.00")


def _deposits_system() -> D:
    return LedgerAccount.objects.get(owner=None, kind="deposits").balance


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.com", "ops-password-2026")


def test_deposit_request_credits_nothing_until_approved_then_exactly_the_amount(buyer, staff):
    before = balances_get(account=buyer)["available"]
    request = funding.funding_deposit_request(account=buyer, amount="250.00", reference="wire 77")
    assert request.status == "pending" and request.hold_transaction is None
    assert balances_get(account=buyer)["available"] == before

    done = funding.funding_request_approve(request_id=request.pk, staff=staff)
    assert done.status == "approved" and done.decided_by == staff and done.decided_at is not None
    assert balances_get(account=buyer)["available"] == before + D("250.00")
    assert done.decision_transaction.key == f"deposit-request:{request.pk}"
    assert "wire 77" in done.decision_transaction.memo
    assert_invariants()


def test_withdrawal_holds_at_once_and_approval_pays_the_hold_out(buyer, staff):
    before, system_before = balances_get(account=buyer)["available"], _deposits_system()
    request = funding.funding_withdrawal_request(account=buyer, amount="400.00", reference="IBAN DE00")
    assert balances_get(account=buyer)["available"] == before - D("400.00")
    assert _hold(buyer) == D("400.00")
    assert balances_by_currency(account=buyer)[0]["pending_withdrawal"] == D("400.00")
    assert _deposits_system() == system_before  # nothing has left the exchange yet

    funding.funding_request_approve(request_id=request.pk, staff=staff)
    assert balances_get(account=buyer)["available"] == before - D("400.00")
    assert _hold(buyer) == D("0.00")
    assert _deposits_system() == system_before + D("400.00")
    assert_invariants()


@pytest.mark.parametrize("how", ["reject", "cancel"])
def test_rejected_or_cancelled_withdrawal_returns_the_hold(buyer, staff, how):
    before = balances_get(account=buyer)["available"]
    request = funding.funding_withdrawal_request(account=buyer, amount="99.99")
    if how == "reject":
        done = funding.funding_request_reject(request_id=request.pk, staff=staff, note="name mismatch")
        assert done.status == "rejected" and done.decision_note == "name mismatch"
    else:
        done = funding.funding_request_cancel(account=buyer, request_id=request.pk)
        assert done.status == "cancelled"
    assert balances_get(account=buyer)["available"] == before
    assert _hold(buyer) == D("0.00")
    assert done.decision_transaction.kind == LedgerTransaction.Kind.WITHDRAWAL_RELEASE
    assert_invariants()


def test_a_request_is_decided_once(buyer, staff):
    request = funding.funding_withdrawal_request(account=buyer, amount="10.00")
    funding.funding_request_approve(request_id=request.pk, staff=staff)
    entries = LedgerEntry.objects.count()
    for decide in (
        lambda: funding.funding_request_approve(request_id=request.pk, staff=staff),
        lambda: funding.funding_request_reject(request_id=request.pk, staff=staff),
        lambda: funding.funding_request_cancel(account=buyer, request_id=request.pk),
    ):
        with pytest.raises(ServiceError) as exc:
            decide()
        assert exc.value.code == "funding_already_decided" and exc.value.status == 409
    assert LedgerEntry.objects.count() == entries


def test_withdrawal_beyond_available_is_refused_and_changes_nothing(buyer, instrument):
    factories.place(buyer, instrument, "buy", 10, "100.00")  # escrow is not withdrawable
    available = balances_get(account=buyer)["available"]
    entries, requests = LedgerEntry.objects.count(), FundingRequest.objects.count()
    with pytest.raises(ServiceError) as exc:
        funding.funding_withdrawal_request(account=buyer, amount=available + D("0.01"))
    assert exc.value.code == "insufficient_funds" and exc.value.field == "amount"
    assert (LedgerEntry.objects.count(), FundingRequest.objects.count()) == (entries, requests)
    assert balances_get(account=buyer)["available"] == available


@pytest.mark.parametrize(
    "amount, code",
    [("0", "invalid_amount"), ("-5", "invalid_amount"), ("1.001", "invalid_amount"), ("1,000.00", "invalid_amount"),
     ("NaN", "invalid_amount"), ("1e999999", "invalid_amount"), ("abc", "invalid_amount")],
)
def test_bad_amounts_are_refused_by_name(buyer, amount, code):
    for service in (funding.funding_deposit_request, funding.funding_withdrawal_request):
        with pytest.raises(ServiceError) as exc:
            service(account=buyer, amount=amount)
        assert exc.value.code == code and exc.value.field == "amount"
    assert not FundingRequest.objects.exists()


def test_a_participant_cannot_cancel_another_accounts_request(buyer, other_buyer):
    request = funding.funding_withdrawal_request(account=buyer, amount="5.00")
    with pytest.raises(ServiceError) as exc:
        funding.funding_request_cancel(account=other_buyer, request_id=request.pk)
    assert exc.value.status == 404
    request.refresh_from_db()
    assert request.status == "pending" and _hold(buyer) == D("5.00")


def test_sandbox_credit_only_when_the_sandbox_is_on(buyer, settings):
    settings.SANDBOX_FUNDING = False
    with pytest.raises(ServiceError) as exc:
        funding.funding_sandbox_credit(account=buyer, amount="100.00")
    assert exc.value.code == "sandbox_disabled" and exc.value.status == 403
    settings.SANDBOX_FUNDING = True
    before = balances_get(account=buyer)["available"]
    done = funding.funding_sandbox_credit(account=buyer, amount="100.00")
    assert done.sandbox and done.status == "approved"
    assert "TEST FUNDS" in done.decision_transaction.memo
    assert balances_get(account=buyer)["available"] == before + D("100.00")
    with pytest.raises(ServiceError):
        funding.funding_sandbox_credit(account=buyer, amount=settings.SANDBOX_CREDIT_MAX + 1)
    assert_invariants()


def test_production_refuses_the_sandbox_setting():
    import subprocess
    import sys

    from django.conf import settings as django_settings

    env = {"DJANGO_ENV": "production", "SECRET_KEY": "x" * 40, "SANDBOX_FUNDING": "true", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; django.setup()"],
        env=env, capture_output=True, text=True, cwd=str(django_settings.BASE_DIR),
    )
    assert run.returncode != 0
    assert "SANDBOX_FUNDING must be off in production" in run.stderr


# --- the API ------------------------------------------------------------------------------------


def test_api_deposit_and_withdrawal_requests_need_the_funding_scope(buyer):
    plain = api_client_for(buyer, ("read", "trade"))
    r = plain.post("/api/v1/funding/deposits", {"amount": "10.00"}, format="json")
    assert r.status_code == 403 and "funding" in r.json()["error"]["message"]
    assert not FundingRequest.objects.exists()

    api = api_client_for(buyer, ("read", "funding"))
    r = api.post("/api/v1/funding/deposits", {"amount": "10.00", "reference": "wire 9"}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["kind"] == "deposit" and body["amount"] == "10.00" and body["status"] == "pending"
    r = api.post("/api/v1/funding/withdrawals", {"amount": "20.00"}, format="json")
    assert r.status_code == 201 and r.json()["status"] == "pending"
    assert api.get("/api/v1/balances").json()["balances"][0]["pending_withdrawal"] == "20.00"
    listing = api.get("/api/v1/funding").json()["results"]
    assert [x["kind"] for x in listing] == ["withdrawal", "deposit"]
    assert [x["id"] for x in api.get("/api/v1/funding?status=pending").json()["results"]] == [x["id"] for x in listing]
    assert api.get("/api/v1/funding?status=bogus").status_code == 400
    r = api.post(f"/api/v1/funding/{listing[0]['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert api.post(f"/api/v1/funding/{listing[0]['id']}/cancel").json()["error"]["code"] == "funding_already_decided"
    assert_invariants()


def test_api_bad_input_is_a_4xx_and_writes_nothing(buyer):
    api = api_client_for(buyer, ("read", "funding"))
    entries = LedgerEntry.objects.count()
    for body in ({}, {"amount": "1,5"}, {"amount": "-1"}, {"amount": "10.00", "reference": "x\x00y"},
                 {"amount": "10.00", "reference": "r" * 200}, {"amount": "999999999999999"}):
        for path in ("/api/v1/funding/deposits", "/api/v1/funding/withdrawals"):
            r = api.post(path, body, format="json")
            assert 400 <= r.status_code < 500, (path, body, r.content)
            assert r.json()["error"]["code"]
    assert not FundingRequest.objects.exists() and LedgerEntry.objects.count() == entries


def test_api_lists_only_own_requests(buyer, other_buyer):
    mine = funding.funding_deposit_request(account=buyer, amount="1.00")
    funding.funding_deposit_request(account=other_buyer, amount="2.00")
    ids = [x["id"] for x in api_client_for(buyer, ("read",)).get("/api/v1/funding").json()["results"]]
    assert ids == [mine.pk]
    other = FundingRequest.objects.get(account=other_buyer)
    r = api_client_for(buyer, ("funding",)).post(f"/api/v1/funding/{other.pk}/cancel")
    assert r.status_code == 404
    other.refresh_from_db()
    assert other.status == "pending"


# --- admin and the web page -----------------------------------------------------------------------


def test_admin_queue_approves_in_one_action_and_logs_it(client, staff, buyer):
    client.force_login(staff)
    otp_verified(client, staff)  # admin asks staff for a second factor
    deposit = funding.funding_deposit_request(account=buyer, amount="70.00")
    withdrawal = funding.funding_withdrawal_request(account=buyer, amount="30.00")
    done = funding.funding_deposit_request(account=buyer, amount="1.00")
    funding.funding_request_reject(request_id=done.pk, staff=staff)
    queue = client.get(reverse("admin:metering_fundingrequest_changelist"))
    assert queue.status_code == 200
    shown = {r.pk for r in queue.context["cl"].result_list}
    assert shown == {deposit.pk, withdrawal.pk}  # the queue shows pending requests first
    available = balances_get(account=buyer)["available"]
    r = client.post(
        reverse("admin:metering_fundingrequest_changelist"),
        {"action": "approve", "_selected_action": [deposit.pk, withdrawal.pk]},
    )
    assert r.status_code == 302
    assert balances_get(account=buyer)["available"] == available + D("70.00")
    assert _hold(buyer) == D("0.00")
    assert set(FundingRequest.objects.filter(pk__in=[deposit.pk, withdrawal.pk]).values_list("status", flat=True)) == {"approved"}
    logged = list(LogEntry.objects.filter(object_id__in=[str(deposit.pk), str(withdrawal.pk)]).values_list("change_message", flat=True))
    assert len(logged) == 2 and all("approved" in m for m in logged)
    # Approving again changes nothing.
    client.post(reverse("admin:metering_fundingrequest_changelist"), {"action": "approve", "_selected_action": [deposit.pk]})
    assert balances_get(account=buyer)["available"] == available + D("70.00")
    assert_invariants()


def test_admin_without_ledger_permission_cannot_decide(client, django_user_model, buyer):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="viewer-pass-2026", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_fundingrequest"))
    client.force_login(viewer)
    otp_verified(client, viewer)
    request = funding.funding_deposit_request(account=buyer, amount="5.00")
    client.post(reverse("admin:metering_fundingrequest_changelist"), {"action": "approve", "_selected_action": [request.pk]})
    request.refresh_from_db()
    assert request.status == "pending"


def test_web_page_requests_a_deposit_and_a_withdrawal_and_shows_field_errors(buyer, settings):
    settings.SANDBOX_FUNDING = False
    web = logged_in(member(buyer))
    page = web.get(reverse("web:funding"))
    assert page.status_code == 200 and "Credit test funds" not in page.content.decode()
    r = web.post(reverse("web:funding"), {"kind": "deposit", "deposit-amount": "1,5", "deposit-reference": ""})
    assert r.status_code == 400 and "is not an amount" in r.content.decode()
    r = web.post(reverse("web:funding"), {"kind": "withdrawal", "withdrawal-amount": "12.50", "withdrawal-reference": "acct 1"})
    assert r.status_code == 302
    request = FundingRequest.objects.get()
    assert (request.kind, request.amount, request.reference, request.requested_by.username) == (
        "withdrawal", D("12.50"), "acct 1", f"user-of-{buyer.slug}"
    )
    page = web.get(reverse("web:funding")).content.decode()
    assert f'id="funding-{request.pk}" data-status="pending"' in page
    web.post(reverse("web:funding_cancel", args=[request.pk]))
    request.refresh_from_db()
    assert request.status == "cancelled"
    assert_invariants()


def test_web_sandbox_credit_is_labelled_test_funds(buyer, settings):
    settings.SANDBOX_FUNDING = True
    web = logged_in(member(buyer))
    assert "Credit test funds" in web.get(reverse("web:funding")).content.decode()
    before = balances_get(account=buyer)["available"]
    assert web.post(reverse("web:funding"), {"kind": "sandbox", "sandbox-amount": "500.00"}).status_code == 302
    assert balances_get(account=buyer)["available"] == before + D("500.00")
    assert "TEST FUNDS" in web.get(reverse("web:balances")).content.decode()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_staff_approving_at_once_pay_out_once(buyer, staff):
    request = funding.funding_withdrawal_request(account=buyer, amount="60.00")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def approve():
        barrier.wait()
        try:
            funding.funding_request_approve(request_id=request.pk, staff=staff)
            outcomes.append("approved")
        except ServiceError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=approve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["approved", "funding_already_decided"]
    assert LedgerTransaction.objects.filter(key=f"withdrawal-paid:{request.pk}").count() == 1
    assert _hold(buyer) == D("0.00")
    assert_invariants()


def test_web_withdrawal_needs_an_owner_with_a_second_factor(buyer):
    from django.contrib.auth import get_user_model

    from marketplace.models import Membership

    data = {"kind": "withdrawal", "withdrawal-amount": "5.00", "withdrawal-reference": ""}
    unverified = logged_in(member(buyer), two_factor=False)
    r = unverified.post(reverse("web:funding"), data)
    assert r.status_code == 403 and "two-factor" in r.content.decode()
    plain = get_user_model().objects.create_user("plain-member", password="member-pass-2026")
    Membership.objects.create(account=buyer, user=plain, role=Membership.Role.MEMBER)
    r = logged_in(plain).post(reverse("web:funding"), data)
    assert r.status_code == 403 and "Only an owner" in r.content.decode()
    assert not FundingRequest.objects.exists()
    # A deposit request moves no money: any member may ask for one.
    r = logged_in(plain).post(reverse("web:funding"), {"kind": "deposit", "deposit-amount": "5.00"})
    assert r.status_code == 302 and FundingRequest.objects.get().kind == "deposit"
