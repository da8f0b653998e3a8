"""TOTP two-factor sign-in (django-otp), offered to every user (README.md "Security").

A user enrols on the account security page: an unconfirmed TOTP device is created, shown as a
QR code and its base32 secret, and confirmed by one code from the authenticator app. From then
on a password login is followed by a code before any account page opens. A verified session is
required to create API keys, to request withdrawals and, for staff, to use admin.
"""

from __future__ import annotations

import base64

import segno
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from .services import ServiceError

DEVICE_NAME = "authenticator app"


def totp_device_confirmed(*, user: AbstractBaseUser) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).first()


def totp_enrolment_start(*, user: AbstractBaseUser) -> TOTPDevice:
    """The user's pending (unconfirmed) device, created on first use; one at a time."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
    return device


def totp_secret(device: TOTPDevice) -> str:
    """The secret as authenticator apps take it when typed in (base32, no padding)."""
    return base64.b32encode(device.bin_key).decode().rstrip("=")


def totp_qr_svg(device: TOTPDevice) -> str:
    """The otpauth:// URL as an inline SVG QR code (served by the project, no CDN)."""
    return segno.make(device.config_url, error="m").svg_inline(scale=4)


def _token(raw: object) -> str:
    token = str(raw or "").strip().replace(" ", "")
    if not token.isdigit() or not 6 <= len(token) <= 8:
        raise ServiceError("invalid_otp", "Enter the 6-digit code your authenticator app shows.", field="token")
    return token


def totp_enrolment_confirm(*, request: HttpRequest, token: object) -> TOTPDevice:
    """Confirm the pending device with a code; the session counts as verified from now on."""
    device = TOTPDevice.objects.filter(user=request.user, confirmed=False).first()
    if device is None:
        raise ServiceError("no_pending_device", "Start the set-up again: no authenticator is waiting for a code.")
    if not device.verify_token(_token(token)):
        raise ServiceError("invalid_otp", "That code is not valid; check the time on your phone and retry.", field="token")
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    TOTPDevice.objects.filter(user=request.user).exclude(pk=device.pk).delete()
    otp_login(request, device)
    return device


def totp_login_verify(*, request: HttpRequest, token: object) -> None:
    """The second step of a login: a code from the user's confirmed device."""
    device = totp_device_confirmed(user=request.user)
    if device is None:
        raise ServiceError("no_device", "This user has no authenticator set up.")
    if not device.verify_token(_token(token)):
        # verify_token throttles repeated failures itself (django-otp's backoff per device).
        raise ServiceError("invalid_otp", "That code is not valid.", field="token", status=400)
    otp_login(request, device)


def session_verified(request: HttpRequest) -> bool:
    """This session passed a TOTP code (OTPMiddleware sets is_verified; a user logged in during
    this very request has not passed one yet)."""
    is_verified = getattr(request.user, "is_verified", None)
    return bool(is_verified and is_verified())


def two_factor_required(*, request: HttpRequest, action: str) -> None:
    """Refuse (403 `two_factor_required`) `action` in a session not verified by a TOTP code."""
    if not session_verified(request):
        raise ServiceError(
            "two_factor_required",
            f"To {action}, set up two-factor sign-in (Account security) and sign in with a code.",
            status=403,
        )
