"""OpenAPI post-processing: every operation documents the one error shape.

DRF views answer refusals with {"error": {"code", "message", "fields"}} (errors.py), but
drf-spectacular only documents success responses. Declaring the error responses here keeps
the schema honest for clients and lets the fuzz tests (tests/security/test_schema_fuzz.py)
check that every 4xx/503 body really has that shape.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from rest_framework import permissions

ERROR_SCHEMA = {
    "type": "object",
    "description": "The one error shape of the API.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {
                    "type": "string",
                    "description": "Machine-readable, e.g. validation_error, insufficient_funds",
                },
                "message": {"type": "string", "description": "What went wrong and what to do, for a person"},
                "fields": {
                    "type": "object",
                    "description": "Per-field messages (dotted paths for nested fields)",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
            "required": ["code", "message", "fields"],
            "additionalProperties": False,
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERROR_RESPONSES = {
    "4XX": "Refused: bad input, authentication, scope, ownership, conflict, size or rate limit",
    "503": "The database is unreachable; nothing was changed. Retry after Retry-After seconds.",
}
_METHODS = {"get", "post", "put", "patch", "delete"}


def add_error_responses(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in _ERROR_RESPONSES.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}
                )
    return result


class ExchangeAutoSchema(AutoSchema):
    """Public operations (catalog, market data) declare no security requirement.

    drf-spectacular lists the API key as one alternative beside anonymous access, and
    generated clients then demand a key for the public catalog. A key is still accepted there
    (it only changes which throttle applies), so saying nothing is the truthful schema.
    """

    def get_auth(self):
        perms = [p.__class__ for p in self.view.get_permissions()]
        if perms and all(p is permissions.AllowAny for p in perms):
            return []
        return super().get_auth()
