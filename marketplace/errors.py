"""The refusals every service raises, below every service (and every app) in the import layers.

The API maps a ServiceError to the one error shape {"error": {"code", "message", "fields"}}.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal a person can act on; the API maps it to the one error shape."""

    status = 400

    def __init__(self, code: str, message: str, *, field: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


class NotFound(ServiceError):
    status = 404
