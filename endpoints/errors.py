"""Errors in the MLflow REST shape: ``{"error_code": …, "message": …}`` with an HTTP status.

Services raise these; the API's exception handler, the gateway and the UI render them.
"""

from __future__ import annotations


class ServingError(Exception):
    error_code = "INTERNAL_ERROR"
    status = 500

    def __init__(self, message: str, *, error_code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if error_code:
            self.error_code = error_code
        if status:
            self.status = status

    def as_json(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


class InvalidParameter(ServingError):
    error_code = "INVALID_PARAMETER_VALUE"
    status = 400


class BadRequest(ServingError):
    error_code = "BAD_REQUEST"
    status = 400


class Unauthenticated(ServingError):
    error_code = "UNAUTHENTICATED"
    status = 401


class PermissionDenied(ServingError):
    error_code = "PERMISSION_DENIED"
    status = 403


class NotFound(ServingError):
    error_code = "RESOURCE_DOES_NOT_EXIST"
    status = 404


class AlreadyExists(ServingError):
    error_code = "RESOURCE_ALREADY_EXISTS"
    status = 409


class Conflict(ServingError):
    error_code = "RESOURCE_CONFLICT"
    status = 409


class PayloadTooLarge(ServingError):
    error_code = "REQUEST_ENTITY_TOO_LARGE"
    status = 413


class RateLimited(ServingError):
    error_code = "REQUEST_LIMIT_EXCEEDED"
    status = 429


class Unavailable(ServingError):
    error_code = "TEMPORARILY_UNAVAILABLE"
    status = 503


class Timeout(ServingError):
    error_code = "DEADLINE_EXCEEDED"
    status = 504
