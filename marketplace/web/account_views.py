"""The signed-in user's own settings (e-mail, password; two-factor lives at /account/security/)
and the password-reset pages, which are Django's auth views in the site's templates."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_http_methods

from marketplace import services

from .forms import EmailForm
from .pages import page
from .security_views import needs_verification


@login_required
@require_http_methods(["GET", "POST"])
def account_settings(request: HttpRequest) -> HttpResponse:
    """Two forms on one page, told apart by `form`: the e-mail address and the password."""
    if needs_verification(request):
        return redirect(f"{reverse('web:login_verify')}?next={reverse('web:account')}")
    which = request.POST.get("form") if request.method == "POST" else None
    email_form = EmailForm(request.POST if which == "email" else None, initial={"email": request.user.email})
    password_form = PasswordChangeForm(request.user, request.POST if which == "password" else None)
    if which == "email" and email_form.is_valid():
        services.user_email_set(user=request.user, email=email_form.cleaned_data["email"])
        messages.success(request, "E-mail saved." if request.user.email else "E-mail removed.")
        return redirect("web:account")
    if which == "password" and password_form.is_valid():
        user = password_form.save()
        update_session_auth_hash(request, user)  # this session stays signed in; others end
        messages.success(request, "Password changed. Other sessions of this user are signed out.")
        return redirect("web:account")
    bad = email_form.errors or password_form.errors
    return page(
        request, "web/account.html", {"email_form": email_form, "password_form": password_form}, status=400 if bad else 200
    )


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "web/password_reset.html"
    email_template_name = "web/email/password_reset.txt"
    subject_template_name = "web/email/password_reset_subject.txt"
    success_url = reverse_lazy("web:password_reset_done")


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "web/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "web/password_reset_confirm.html"
    success_url = reverse_lazy("web:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "web/password_reset_complete.html"
