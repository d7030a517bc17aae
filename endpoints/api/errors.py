"""One exception handler: every API error is ``{"error_code", "message"}`` (MLflow's shape)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from endpoints.errors import ServingError

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
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
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
