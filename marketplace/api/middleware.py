"""Refusals that must happen before a view runs, in the one error shape.

- A body larger than settings.DATA_UPLOAD_MAX_MEMORY_SIZE is refused with 413 from its
  Content-Length, before anything reads it. Django enforces that setting only when
  request.body is read; DRF's parsers read the stream directly, so without this check an API
  body could be any size.
- Security headers Django's SecurityMiddleware does not set: Content-Security-Policy, and
  Cache-Control: no-store on authenticated API answers.
- A database that is unreachable (connection refused, dropped, failover) gives 503 with
  Retry-After on every page, not Django's generic 500. The API's exception handler does the
  same for DRF views; this covers the web pages and anything outside DRF.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

from marketplace import db_errors

from .errors import DB_RETRY_AFTER, api_not_found, error_body

logger = logging.getLogger(__name__)


def _is_api(path: str) -> bool:
    return path.startswith("/api/")


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


# Content-Security-Policy: JSON needs nothing from the page; HTML pages keep their scripts
# (Swagger UI and htmx use inline ones) but may not be framed, load plugins or post elsewhere.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
# The interactive API docs are an HTML page under /api/: Swagger UI's scripts, its stylesheet
# and its inline styles come from this origin (the split view serves its init script as a
# file, so no inline script is allowed), and it fetches the schema from here.
DOCS_PATHS = ("/api/docs/",)
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def _security_headers(request, response) -> None:
    # Also here (not only in XFrameOptionsMiddleware) for answers this middleware makes itself.
    response.headers.setdefault("X-Frame-Options", settings.X_FRAME_OPTIONS)
    if request.path.startswith(DOCS_PATHS):
        response.headers.setdefault("Content-Security-Policy", DOCS_CSP)
    elif _is_api(request.path):
        response.headers.setdefault("Content-Security-Policy", API_CSP)
        if request.META.get("HTTP_AUTHORIZATION"):
            # A private answer (orders, balances) must not sit in a shared or browser cache.
            response.headers.setdefault("Cache-Control", "no-store")
    else:
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)


class RequestLimitsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            response = JsonResponse(
                error_body("bad_request", "Content-Length must be a non-negative whole number."),
                status=400,
            )
            _security_headers(request, response)
            return response
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
        ):
            # PostgreSQL cannot store or compare a NUL character: refuse it before any query.
            response = JsonResponse(error_body("bad_request", "The URL contains a NUL character."), status=400)
            _security_headers(request, response)
            return response
        if limit is not None and length > limit:
            response = JsonResponse(
                error_body(
                    "request_too_large",
                    f"The request body is {length:,} bytes; the limit is {limit:,}. Send smaller batches.",
                ),
                status=413,
            )
            _security_headers(request, response)
            return response
        response = self.get_response(request)
        if response.status_code == 404 and _is_api(request.path) and not _is_json(response):
            # An unknown /api/ path: Django answers with its HTML page (the debug page when
            # DEBUG is on, since handler404 only applies without it); clients expect JSON.
            response = api_not_found(request)
        _security_headers(request, response)
        return response

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        if db_errors.is_transient(exception):
            message, code, retry = "The exchange was too busy; nothing was changed. Retry.", "database_busy", 1
        elif db_errors.is_unavailable(exception):
            message = "The exchange could not reach its database; nothing was changed. Retry shortly."
            code, retry = "database_unavailable", DB_RETRY_AFTER
        else:
            return None  # caused by the request, not an outage: Django's 500, logged as a bug
        logger.error("%s during %s", code, request.path, exc_info=exception)
        if _is_api(request.path):
            response = JsonResponse(error_body(code, message), status=503)
        else:
            response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(retry)
        return response
