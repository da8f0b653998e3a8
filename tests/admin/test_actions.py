"""Admin actions call the services, change the real rows, and write Django's admin log."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from marketplace.models import Account, ApiKey, Instrument, Order
from metering.models import LedgerTransaction
from metering.selectors import balances_get
from tests import factories
from tests.invariants import assert_invariants

pytestmark = pytest.mark.django_db


def _post_action(client, model: str, action: str, ids, **extra):
    url = reverse(f"admin:{model}_changelist")
    return client.post(url, {"action": action, "_selected_action": [str(i) for i in ids], **extra})


def _log_messages(obj) -> list[str]:
    ct = ContentType.objects.get_for_model(obj)
    return list(
        LogEntry.objects.filter(content_type=ct, object_id=str(obj.pk), action_flag=CHANGE).values_list(
            "change_message", flat=True
        )
    )


def test_deposit_shows_a_form_then_posts_through_the_ledger(staff_client, superuser, buyer):
    before = balances_get(account=buyer)["available"]

    form_page = _post_action(staff_client, "marketplace_account", "deposit", [buyer.pk])
    assert form_page.status_code == 200
    assert "admin/marketplace/account/funds_form.html" in [t.name for t in form_page.templates]
    token = form_page.context["form"].initial["token"]

    resp = _post_action(
        staff_client,
        "marketplace_account",
        "deposit",
        [buyer.pk],
        apply="1",
        amount="250.50",
        reason="wire 42",
        token=str(token),
    )
    assert resp.status_code == 302

    assert balances_get(account=buyer)["available"] == before + Decimal("250.50")
    txn = LedgerTransaction.objects.get(key=f"deposit:admin:{token}:{buyer.pk}")
    assert txn.memo == "wire 42"
    [message] = _log_messages(buyer)
    assert message.startswith("deposit 250.50 (wire 42)")
    assert LogEntry.objects.get(object_id=str(buyer.pk)).user == superuser

    # A double submit of the same form posts nothing twice.
    _post_action(
        staff_client,
        "marketplace_account",
        "deposit",
        [buyer.pk],
        apply="1",
        amount="250.50",
        reason="wire 42",
        token=str(token),
    )
    assert balances_get(account=buyer)["available"] == before + Decimal("250.50")
    assert_invariants()


def test_withdraw_posts_and_refuses_beyond_the_balance(staff_client, buyer):
    before = balances_get(account=buyer)["available"]
    ok = _post_action(
        staff_client,
        "marketplace_account",
        "withdraw",
        [buyer.pk],
        apply="1",
        amount="100.00",
        reason="payout",
        token="00000000-0000-4000-8000-000000000001",
    )
    assert ok.status_code == 302
    assert balances_get(account=buyer)["available"] == before - Decimal("100.00")
    assert _log_messages(buyer)[0].startswith("withdraw 100.00 (payout)")

    too_much = _post_action(
        staff_client,
        "marketplace_account",
        "withdraw",
        [buyer.pk],
        apply="1",
        amount="999999.00",
        reason="x",
        token="00000000-0000-4000-8000-000000000002",
    )
    assert too_much.status_code == 302
    messages = [str(m) for m in too_much.wsgi_request._messages]
    assert any("cannot withdraw" in m for m in messages)
    assert balances_get(account=buyer)["available"] == before - Decimal("100.00")
    assert len(_log_messages(buyer)) == 1
    assert_invariants()


def test_funds_form_rejects_bad_amounts(staff_client, buyer):
    before = balances_get(account=buyer)["available"]
    resp = _post_action(
        staff_client,
        "marketplace_account",
        "deposit",
        [buyer.pk],
        apply="1",
        amount="-5",
        reason="x",
        token="00000000-0000-4000-8000-000000000003",
    )
    assert resp.status_code == 200
    assert "amount" in resp.context["form"].errors
    assert balances_get(account=buyer)["available"] == before


def test_halt_and_resume_an_instrument(staff_client, instrument):
    _post_action(staff_client, "marketplace_instrument", "halt", [instrument.pk])
    instrument.refresh_from_db()
    assert instrument.status == Instrument.Status.HALTED

    _post_action(staff_client, "marketplace_instrument", "resume", [instrument.pk])
    instrument.refresh_from_db()
    assert instrument.status == Instrument.Status.OPEN
    assert sorted(_log_messages(instrument)) == ["Halted trading (status halted)", "Resumed trading (status open)"]


def test_cancel_order_releases_escrow_and_logs(staff_client, instrument, buyer):
    order = factories.place(buyer, instrument, "buy", 3, "2.00")
    escrow_before = balances_get(account=buyer)["escrow"]
    assert escrow_before > 0

    _post_action(staff_client, "marketplace_order", "cancel", [order.pk])

    order.refresh_from_db()
    assert order.status == "cancelled"
    assert balances_get(account=buyer)["escrow"] == Decimal("0.00")
    assert _log_messages(order) == ["Cancelled order (by operator)"]
    # Cancelling again is refused with a message, not a 500, and logs nothing more.
    resp = _post_action(staff_client, "marketplace_order", "cancel", [order.pk])
    assert resp.status_code == 302
    assert len(_log_messages(order)) == 1
    assert_invariants()


def test_revoke_api_key(staff_client, buyer):
    key, _ = factories.api_key(buyer)
    _post_action(staff_client, "marketplace_apikey", "revoke", [key.pk])
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert _log_messages(key) == ["Revoked API key"]


def test_add_account_and_api_key_through_the_services(staff_client, superuser):
    resp = staff_client.post(
        reverse("admin:marketplace_account_add"),
        {"name": "Acme Compute", "is_provider": "on", "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"},
    )
    assert resp.status_code == 302, resp.content
    acct = Account.objects.get(name="Acme Compute")
    assert acct.slug == "acme-compute" and acct.is_provider
    assert set(acct.ledger_accounts.values_list("kind", flat=True)) == {"available", "escrow", "owed"}

    resp = staff_client.post(
        reverse("admin:marketplace_apikey_add"), {"account": acct.pk, "name": "meter", "scopes": ["read", "meter"]}
    )
    assert resp.status_code == 302
    key = ApiKey.objects.get(account=acct)
    assert key.scopes == ["meter", "read"] and key.created_by == superuser
    shown = [str(m) for m in resp.wsgi_request._messages]
    assert any(f"cy_{key.prefix}_" in m for m in shown)


def test_meter_scope_needs_a_provider(staff_client, buyer):
    resp = staff_client.post(
        reverse("admin:marketplace_apikey_add"), {"account": buyer.pk, "name": "x", "scopes": ["meter"]}
    )
    assert resp.status_code == 200
    assert "scopes" in resp.context["adminform"].form.errors
    assert not ApiKey.objects.filter(account=buyer).exists()


def test_orders_and_ledger_cannot_be_edited_in_admin(staff_client, instrument, buyer):
    order = factories.place(buyer, instrument, "buy", 1, "2.00")
    resp = staff_client.post(reverse("admin:marketplace_order_change", args=[order.pk]), {"quantity": "5"})
    assert resp.status_code == 403
    assert Order.objects.get(pk=order.pk).quantity == order.quantity
    txn = LedgerTransaction.objects.first()
    assert staff_client.post(reverse("admin:metering_ledgertransaction_delete", args=[txn.pk])).status_code == 403
    assert staff_client.get(reverse("admin:metering_ledgerentry_add")).status_code == 403
