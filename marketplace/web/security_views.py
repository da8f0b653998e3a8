"""Sign-in pages: login (password, then a TOTP code for users who set one up) and the account
security page where any user sets up two-factor sign-in. Logic lives in marketplace/two_factor.py."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from marketplace import two_factor
from marketplace.services import ServiceError


class TokenForm(forms.Form):
    token = forms.CharField(
        label="Code from your authenticator app",
        max_length=8,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "one-time-code"}),
    )


def _next(request: HttpRequest, default: str = "/") -> str:
    nxt = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return nxt
    return default


def needs_verification(request: HttpRequest) -> bool:
    """Signed in with the password only, by a user who has set up two-factor sign-in."""
    user = request.user
    return (
        user.is_authenticated
        and not two_factor.session_verified(request)
        and two_factor.totp_device_confirmed(user=user) is not None
    )


class LoginView(auth_views.LoginView):
    """The password step; a user with an authenticator is sent on to the code step."""

    template_name = "web/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        if needs_verification(self.request):
            return redirect(f"{reverse('web:login_verify')}?next={self.get_success_url()}")
        return response


@login_required
@require_http_methods(["GET", "POST"])
def login_verify(request: HttpRequest) -> HttpResponse:
    if not needs_verification(request):
        return redirect(_next(request))
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            two_factor.totp_login_verify(request=request, token=form.cleaned_data["token"])
        except ServiceError as exc:
            form.add_error("token", exc.message)
        else:
            return redirect(_next(request))
    status = 400 if form.errors else 200
    return render(request, "web/login_verify.html", {"form": form, "next": _next(request)}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def security(request: HttpRequest) -> HttpResponse:
    """Two-factor status; set-up with a QR code and secret, confirmed by one code."""
    if needs_verification(request):
        return redirect(f"{reverse('web:login_verify')}?next={reverse('web:security')}")
    device = two_factor.totp_device_confirmed(user=request.user)
    form = TokenForm(request.POST or None)
    if device is None and request.method == "POST" and form.is_valid():
        try:
            two_factor.totp_enrolment_confirm(request=request, token=form.cleaned_data["token"])
        except ServiceError as exc:
            form.add_error("token", exc.message)
        else:
            messages.success(request, "Two-factor sign-in is on: every login now asks for a code.")
            return redirect("web:security")
    context = {"device": device, "form": form}
    if device is None:
        pending = two_factor.totp_enrolment_start(user=request.user)
        context.update(qr_svg=two_factor.totp_qr_svg(pending), secret=two_factor.totp_secret(pending))
    return render(request, "web/security.html", context, status=400 if form.errors else 200)
