"""What each member of an account may do (README.md "Roles").

- owner: everything a member may, plus create and revoke API keys, request withdrawals and
  manage the account's members;
- member: trade (place and cancel orders) and view everything of the account.

Staff act through admin and management commands, which are not account doors: a service
called without a user (a command) or by staff skips the check.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from .models import Account, Membership
from .services import ServiceError

OWNER_ONLY = {
    "api_key_manage": "create or revoke API keys",
    "withdrawal_request": "request withdrawals",
    "members_manage": "manage members",
}


def membership_role(*, user: AbstractBaseUser, account: Account) -> str | None:
    return Membership.objects.filter(user=user, account=account).values_list("role", flat=True).first()


def account_permission_check(*, user: AbstractBaseUser | None, account: Account, action: str) -> None:
    """Refuse (403, `owner_required`) an owner-only `action` by a user who is not an owner."""
    if action not in OWNER_ONLY:
        raise ValueError(f"unknown action {action!r}")
    if user is None or getattr(user, "is_staff", False):
        return
    if membership_role(user=user, account=account) != Membership.Role.OWNER:
        raise ServiceError(
            "owner_required", f"Only an owner of {account.name} may {OWNER_ONLY[action]}; ask an owner.", status=403
        )
