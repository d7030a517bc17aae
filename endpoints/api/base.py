"""What every API view shares: JSON in and out, argument parsing, the OpenAPI description
of an operation, and the rate limit on calls that change something."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from endpoints.errors import BadRequest, NotFound

from .parsers import PARSERS
from .schema import JsonSchema
from .serializers.common import ErrorResponse
from .throttling import ManageRateThrottle

ENDPOINTS_V2 = "Serving endpoints (endpoints-v2)"
REGISTRY = "Model registry"
TOKENS = "Tokens"
PERMISSIONS = "Permissions"
PRINCIPALS = "Service principals"

# Statuses every call may answer besides 200: bad arguments, no or bad token, not allowed
# (or a session request without its CSRF token), no such endpoint.
_COMMON_ERRORS = (400, 401, 403, 404)

GET_ARGS = "Arguments as query parameters, or as a JSON body."


def doc(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    response: type[Serializer],
    request: type[Serializer] | None = None,
    query: type[Serializer] | None = None,
    errors: Iterable[int] = (),
    description: str = "",
) -> Callable:
    """The OpenAPI description of one operation, every status it answers included."""
    codes = sorted({*_COMMON_ERRORS, *errors})
    if request is not None:
        codes = sorted({*codes, 413, 415})
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        description=description or None,
        tags=[tag],
        request=request,
        parameters=[query] if query is not None else None,
        responses={200: response, **dict.fromkeys(codes, ErrorResponse)},
    )


class ApiView(APIView):
    """JSON in, JSON out."""

    parser_classes = PARSERS
    renderer_classes = [JSONRenderer]
    schema = JsonSchema()


class ManageView(ApiView):
    """A call that changes state: rate limited (scope ``manage``)."""

    throttle_classes = [ManageRateThrottle]
    throttle_scope = "manage"


def parse(request: Request, serializer_class: type[Serializer]) -> dict[str, Any]:
    """Validated arguments: the JSON body, merged into the query parameters for a GET or
    a DELETE (OpenAPI documents their arguments as query parameters)."""
    body = request.data
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if request.method in ("GET", "DELETE"):
        data: dict[str, Any] = {**request.query_params.dict(), **body}
        source = "query"
    else:
        data, source = body, "json"
    serializer = serializer_class(data=data, context={"source": source})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def registry_name(name: str) -> str:
    """``name`` if the registry could hold a model of that name, else it does not exist.

    MLflow refuses such names outright (empty, with '/' or ':', or one that resolves to
    another path); for the API they simply name no registered model."""
    normalized = posixpath.normpath(name)
    if (
        not name.strip()
        or "/" in name
        or ":" in name
        or normalized != name
        or normalized == "."
        or normalized.startswith("..")
    ):
        raise NotFound(f"Registered model '{name}' does not exist.")
    return name
