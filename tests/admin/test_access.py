"""Only staff reach the report and the admin actions; nothing changes otherwise."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from marketplace.models import ApiKey, Instrument
from metering.models import LedgerTransaction
from tests import factories
from tests.web.conftest import otp_verified

pytestmark = pytest.mark.django_db
REPORT_URL = "admin:metering_settlement_report"


@pytest.fixture
def plain_user(django_user_model):
    return django_user_model.objects.create_user("trader", "t@example.com", "pw-trader-1234")


@pytest.fixture
def bare_staff(django_user_model):
    return django_user_model.objects.create_user("intern", "i@example.com", "pw-intern-1234", is_staff=True)


def _is_login_redirect(resp) -> bool:
    return resp.status_code == 302 and resp["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("export", [None, "csv", "xlsx"])
def test_anonymous_and_non_staff_cannot_reach_the_report(client, plain_user, worked_example, export):
    params = {"date_from": "2026-11-01", "date_to": "2026-11-02", "group_by": "day"}
    if export:
        params["export"] = export
    assert _is_login_redirect(client.get(reverse(REPORT_URL), params))
    client.force_login(plain_user)
    assert _is_login_redirect(client.get(reverse(REPORT_URL), params))


def test_staff_without_settlement_permission_gets_403(client, bare_staff):
    client.force_login(bare_staff)
    otp_verified(client, bare_staff)  # staff pass two-factor sign-in; permissions decide
    assert client.get(reverse(REPORT_URL)).status_code == 403
    bare_staff.user_permissions.add(Permission.objects.get(codename="view_settlement"))
    assert client.get(reverse(REPORT_URL)).status_code == 200


def _post_action(client, model: str, action: str, ids, **extra):
    url = reverse(f"admin:{model}_changelist")
    return client.post(url, {"action": action, "_selected_action": [str(i) for i in ids], **extra})


@pytest.fixture
def targets(instrument, buyer):
    key, _ = factories.api_key(buyer)
    order = factories.place(buyer, instrument, "buy", 2, "2.00")
    return {"instrument": instrument, "account": buyer, "key": key, "order": order}


def _prepare(targets, action: str) -> str:
    """The instrument status the action would change, set up so a change would show: resume
    is tried on a halted instrument (on an open one it changes nothing, allowed or not)."""
    if action == "resume":
        from marketplace.services import instrument_set_status

        instrument_set_status(instrument=targets["instrument"], status=Instrument.Status.HALTED)
        return Instrument.Status.HALTED
    return Instrument.Status.OPEN


def _assert_nothing_changed(targets, deposits_before: int, instrument_status: str = Instrument.Status.OPEN) -> None:
    targets["instrument"].refresh_from_db()
    targets["key"].refresh_from_db()
    targets["order"].refresh_from_db()
    assert targets["instrument"].status == instrument_status
    assert targets["key"].revoked_at is None
    assert targets["order"].status == "open"
    assert LedgerTransaction.objects.filter(kind="deposit").count() == deposits_before


ACTIONS = [
    ("marketplace_instrument", "halt", "instrument", {}),
    ("marketplace_instrument", "resume", "instrument", {}),
    ("marketplace_order", "cancel", "order", {}),
    ("marketplace_apikey", "revoke", "key", {}),
    (
        "marketplace_account",
        "deposit",
        "account",
        {"apply": "1", "amount": "50.00", "reason": "x", "token": "6f1c1f44-8f38-4d7a-9d5c-3c2b1f0e4a11"},
    ),
    (
        "marketplace_account",
        "withdraw",
        "account",
        {"apply": "1", "amount": "50.00", "reason": "x", "token": "6f1c1f44-8f38-4d7a-9d5c-3c2b1f0e4a12"},
    ),
]


@pytest.mark.parametrize(("model", "action", "target", "extra"), ACTIONS)
def test_anonymous_and_non_staff_cannot_run_admin_actions(client, plain_user, targets, model, action, target, extra):
    status = _prepare(targets, action)
    deposits = LedgerTransaction.objects.filter(kind="deposit").count()
    balance_before = _available(targets["account"])

    assert _is_login_redirect(_post_action(client, model, action, [targets[target].pk], **extra))
    client.force_login(plain_user)
    assert _is_login_redirect(_post_action(client, model, action, [targets[target].pk], **extra))

    _assert_nothing_changed(targets, deposits, status)
    assert _available(targets["account"]) == balance_before


@pytest.mark.parametrize(("model", "action", "target", "extra"), ACTIONS)
def test_staff_without_permissions_cannot_run_admin_actions(client, bare_staff, targets, model, action, target, extra):
    # Staff who may only look (view permissions) get no actions.
    for codename in ("view_instrument", "view_order", "view_apikey", "view_account"):
        bare_staff.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(bare_staff)
    otp_verified(client, bare_staff)  # staff pass two-factor sign-in; permissions decide
    status = _prepare(targets, action)
    deposits = LedgerTransaction.objects.filter(kind="deposit").count()
    balance_before = _available(targets["account"])

    resp = _post_action(client, model, action, [targets[target].pk], **extra)

    assert resp.status_code in (200, 302)
    _assert_nothing_changed(targets, deposits, status)
    assert _available(targets["account"]) == balance_before
    assert not ApiKey.objects.filter(revoked_at__isnull=False).exists()


def test_a_superuser_resumes_a_halted_instrument(client, django_user_model, targets):
    # The control for the refusals above: the same request by someone allowed changes the state.
    _prepare(targets, "resume")
    boss = django_user_model.objects.create_superuser("boss", "b@example.com", "pw-boss-1234")
    client.force_login(boss)
    otp_verified(client, boss)  # admin asks staff for a second factor
    resp = _post_action(client, "marketplace_instrument", "resume", [targets["instrument"].pk])
    assert resp.status_code in (200, 302)
    targets["instrument"].refresh_from_db()
    assert targets["instrument"].status == Instrument.Status.OPEN


def _available(account) -> Decimal:
    from metering.selectors import balances_get

    return balances_get(account=account)["available"]
