"""The funding page: request deposits and withdrawals, follow them, cancel a pending one, and
(in the sandbox demo only) credit test funds. The services in metering.funding decide."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods, require_POST

from marketplace import roles, two_factor
from marketplace.services import NotFound, ServiceError
from metering import funding
from metering.models import FundingRequest
from metering.selectors import balances_get

from .forms import add_service_error
from .pages import account_required
from .pages import page as _page


class FundingForm(forms.Form):
    amount = forms.CharField(
        label="Amount", max_length=32, help_text="At most 2 decimal places, no thousands separator: 2500.00"
    )
    reference = forms.CharField(label="Reference", max_length=funding.REFERENCE_MAX, required=False)


class SandboxForm(forms.Form):
    amount = forms.CharField(label="Test funds", max_length=32, initial="10000.00")


_SERVICES = {
    "deposit": (funding.funding_deposit_request, "Deposit of {amount} requested (#{id}): staff credit it once the money has arrived."),
    "withdrawal": (funding.funding_withdrawal_request, "Withdrawal of {amount} requested (#{id}): the amount is held until staff pay it out."),
}


@require_http_methods(["GET", "POST"])
@account_required
def funding_page(request: HttpRequest) -> HttpResponse:
    forms_by_kind = {
        "deposit": FundingForm(request.POST if request.POST.get("kind") == "deposit" else None, prefix="deposit"),
        "withdrawal": FundingForm(request.POST if request.POST.get("kind") == "withdrawal" else None, prefix="withdrawal"),
    }
    forms_by_kind["deposit"].fields["reference"].help_text = "Your bank transfer's reference, so staff can match it."
    forms_by_kind["withdrawal"].fields["reference"].help_text = "Where to pay it (bank account or wallet)."
    sandbox = SandboxForm(request.POST if request.POST.get("kind") == "sandbox" else None, prefix="sandbox")
    status = 200
    if request.method == "POST":
        kind = request.POST.get("kind")
        form = sandbox if kind == "sandbox" else forms_by_kind.get(kind)
        if form is None:
            return _page(request, "web/funding.html", _context(request, forms_by_kind, sandbox), status=400)
        if form.is_valid():
            try:
                if kind == "sandbox":
                    done = funding.funding_sandbox_credit(
                        account=request.account, amount=form.cleaned_data["amount"], user=request.user
                    )
                    message = f"{done.amount} TEST FUNDS credited (sandbox, not real money)."
                else:
                    if kind == "withdrawal":
                        # Money leaving the exchange: an owner, signed in with a second factor.
                        roles.account_permission_check(
                            user=request.user, account=request.account, action="withdrawal_request"
                        )
                        two_factor.two_factor_required(request=request, action="request withdrawals")
                    service, text = _SERVICES[kind]
                    done = service(
                        account=request.account,
                        amount=form.cleaned_data["amount"],
                        reference=form.cleaned_data["reference"],
                        user=request.user,
                    )
                    message = text.format(amount=done.amount, id=done.pk)
            except ServiceError as exc:
                add_service_error(form, exc)
                status = exc.status if 400 <= exc.status < 500 else 400
            else:
                messages.success(request, message)
                return redirect("web:funding")
        else:
            status = 400
    return _page(request, "web/funding.html", _context(request, forms_by_kind, sandbox), status=status)


def _context(request, forms_by_kind, sandbox) -> dict:
    return {
        "deposit_form": forms_by_kind["deposit"],
        "withdrawal_form": forms_by_kind["withdrawal"],
        "sandbox_form": sandbox if settings.SANDBOX_FUNDING else None,
        "balances": balances_get(account=request.account),
        "requests": FundingRequest.objects.filter(account=request.account)[:100],
    }


@require_POST
@account_required
def funding_cancel(request: HttpRequest, request_id: int) -> HttpResponse:
    try:
        done = funding.funding_request_cancel(account=request.account, request_id=request_id, user=request.user)
    except NotFound:
        raise Http404("No such funding request in your account.") from None
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Request #{done.pk} cancelled.")
    return redirect("web:funding")
