"""Bearer API keys and scope permissions."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from marketplace.models import ApiKey

from .key_cache import api_key_cached


class KeyUser:
    """request.user for API calls: the account behind the key."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.account = key.account
        self.pk = f"key:{key.pk}"

    def __str__(self) -> str:
        return f"{self.account.slug} ({self.key.prefix})"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0].lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <api key>'.")
        key = api_key_cached(raw=parts[1])
        if key is None:
            raise exceptions.AuthenticationFailed("This API key is unknown or revoked.")
        return KeyUser(key), key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer cy_...`"}


class _Scope(permissions.BasePermission):
    scope = ""

    @property
    def message(self) -> str:
        return f"This API key lacks the '{self.scope}' scope."

    def has_permission(self, request, view) -> bool:
        key = request.auth
        if not isinstance(key, ApiKey):
            return False
        return key.has_scope(self.scope)


class ReadScope(_Scope):
    scope = "read"


class TradeScope(_Scope):
    scope = "trade"


class MeterScope(_Scope):
    scope = "meter"


class FundingScope(_Scope):
    scope = "funding"


def request_account(request):
    return request.auth.account
