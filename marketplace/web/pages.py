"""What every page of the web UI shares: rendering with the account in context, and the
decorator that requires a signed-in user with an account."""

from __future__ import annotations

from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from . import queries
from .security_views import needs_verification

LIVE_POLL = "2s"


def page(request: HttpRequest, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    context.setdefault("account", getattr(request, "account", None) or queries.account_for_user(user=request.user))
    context.setdefault("currency", settings.EXCHANGE_CURRENCY)
    context.setdefault("live_poll", LIVE_POLL)
    context.setdefault("sandbox_funding", settings.SANDBOX_FUNDING)
    return render(request, template, context, status=status)


def account_required(view):
    """Signed in, with an account: sets request.account, else explains how to get one."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if needs_verification(request):  # password given, two-factor code not yet
            return redirect(f"{reverse('web:login_verify')}?next={request.get_full_path()}")
        request.account = queries.account_for_user(user=request.user)
        if request.account is None:
            return page(request, "web/no_account.html", {}, status=403)
        return view(request, *args, **kwargs)

    return wrapper
