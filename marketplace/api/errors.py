"""The one error shape: {"error": {"code", "message", "fields"}} with the right 4xx status."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from marketplace import db_errors
from marketplace.services import ServiceError

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    503: "service_unavailable",
}

# Seconds a client should wait before retrying after the database was unreachable.
DB_RETRY_AFTER = 5


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten(detail) -> dict:
    """DRF's nested field errors as {"field": ["message", ...]} (nested fields dotted)."""
    out: dict[str, list[str]] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value):
                out.setdefault(prefix or "non_field_errors", []).extend(str(v) for v in value)
            else:
                for i, v in enumerate(value):
                    walk(f"{prefix}.{i}" if prefix else str(i), v)
        else:
            out.setdefault(prefix or "non_field_errors", []).append(str(value))

    walk("", detail)
    return out


def database_unavailable_response() -> Response:
    """503 for a lost or refused database connection: the transaction was rolled back, so the
    client may retry (with the same Idempotency-Key for writes)."""
    response = Response(
        error_body(
            "database_unavailable",
            "The exchange could not reach its database; nothing was changed. Retry shortly "
            "(with the same Idempotency-Key for orders).",
        ),
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
    )
    response["Retry-After"] = str(DB_RETRY_AFTER)
    return response


def database_busy_response() -> Response:
    """503 for a deadlock or serialization failure that outlived its retries: nothing changed."""
    response = Response(
        error_body(
            "database_busy",
            "The exchange was too busy to complete this request; nothing was changed. Retry "
            "(with the same Idempotency-Key for orders).",
        ),
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
    )
    response["Retry-After"] = "1"
    return response


def exception_handler(exc, context):
    if isinstance(exc, (OperationalError, InterfaceError)):
        # Classified by cause (SQLSTATE, connection state): only a lost connection is an outage;
        # anything else propagates as the bug it is (a 500, logged by Django).
        if db_errors.is_unavailable(exc):
            logger.error("database unavailable during %s", context.get("view"), exc_info=exc)
            return database_unavailable_response()
        if db_errors.is_transient(exc):
            logger.warning("transient database error during %s", context.get("view"), exc_info=exc)
            return database_busy_response()
        return None
    if isinstance(exc, ServiceError):
        fields = {exc.field: [exc.message]} if exc.field else {}
        return Response(error_body(exc.code, exc.message, fields), status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = _CODES.get(response.status_code, "error")
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), None)
        message = "The request has invalid fields." if first is None else f"{first[0]}: {first[1][0]}"
        if list(fields) == ["non_field_errors"]:
            message = fields["non_field_errors"][0]
        response.data = error_body("validation_error", message, {k: v for k, v in fields.items() if k != "non_field_errors"} or fields)
        return response
    detail = getattr(exc, "detail", str(exc))
    if isinstance(detail, (dict, list)):
        message, fields = "The request was refused.", _flatten(detail)
    else:
        message, fields = str(detail), {}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        message = f"Too many requests; retry in {int(exc.wait) + 1} seconds."
    response.data = error_body(code, message, fields)
    return response


def json_error(request, status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status_code)


def api_not_found(request) -> JsonResponse:
    return json_error(
        request, status.HTTP_404_NOT_FOUND, "not_found", f"There is no API endpoint at {request.path}; see /api/docs/."
    )


def handler404(request, exception=None):
    """JSON in the one error shape under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return api_not_found(request)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request):
    if request.path.startswith("/api/"):
        return json_error(request, 500, "server_error", "The exchange hit an unexpected error; nothing was changed.")
    from django.views.defaults import server_error

    return server_error(request)
