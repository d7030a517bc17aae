"""One exception handler: every API error is ``{"error_code", "message"}`` (MLflow's shape)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from endpoints.errors import ServingError

log = logging.getLogger(__name__)

_DRF_CODES = {
    status.HTTP_400_BAD_REQUEST: "INVALID_PARAMETER_VALUE",
    status.HTTP_401_UNAUTHORIZED: "UNAUTHENTICATED",
    status.HTTP_403_FORBIDDEN: "PERMISSION_DENIED",
    status.HTTP_404_NOT_FOUND: "RESOURCE_DOES_NOT_EXIST",
    status.HTTP_405_METHOD_NOT_ALLOWED: "BAD_REQUEST",
    status.HTTP_406_NOT_ACCEPTABLE: "BAD_REQUEST",
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: "BAD_REQUEST",
    status.HTTP_429_TOO_MANY_REQUESTS: "REQUEST_LIMIT_EXCEEDED",
}


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(d) for d in detail)
    return str(detail)


def _one_message(path: str, detail: Any) -> str:
    if getattr(detail, "code", None) == "required":
        return f"Missing value for required parameter '{path}'."
    if not path or path.endswith(api_settings.NON_FIELD_ERRORS_KEY):
        return str(detail)
    return f"Invalid value for parameter '{path}': {detail}"


def _validation_messages(detail: Any, path: str = "") -> Iterator[str]:
    """MLflow-style sentences for a serializer's (possibly nested) errors."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            yield from _validation_messages(value, child)
    elif isinstance(detail, list):
        for index, item in enumerate(detail):
            if isinstance(item, dict | list):
                yield from _validation_messages(item, f"{path}[{index}]")
            else:
                yield _one_message(path, item)
    else:
        yield _one_message(path, detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServingError):
        return Response(exc.as_json(), status=exc.status)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response = Response(
            {"error_code": "UNAUTHENTICATED", "message": _flatten(exc.detail)},
            status=status.HTTP_401_UNAUTHORIZED,
        )
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    if isinstance(exc, exceptions.ValidationError):
        message = " ".join(_validation_messages(exc.detail)) or "Invalid request."
        return Response(
            {"error_code": "INVALID_PARAMETER_VALUE", "message": message},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.ParseError):
        return Response(
            {"error_code": "BAD_REQUEST", "message": _flatten(exc.detail)},
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        # An unexpected failure: the traceback goes to the log, the client gets JSON like
        # every other error instead of an HTML page.
        log.exception("unhandled error in %s", context.get("view").__class__.__name__)
        return Response(
            {"error_code": "INTERNAL_ERROR", "message": "Internal server error."},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    code = _DRF_CODES.get(response.status_code, "INTERNAL_ERROR")
    response.data = {
        "error_code": code,
        "message": _flatten(
            response.data.get("detail", response.data)
            if isinstance(response.data, dict)
            else response.data
        ),
    }
    return response
