"""Request body parsing: JSON, also when a client labels it as a form (``curl -d`` sends
curl's default form type, which MLflow's serving API accepted, so scripts written for it
work unchanged); a body that really is a form is refused. A body over
``API_MAX_BODY_BYTES`` is refused with 413 before it is parsed; scoring bodies keep the
gateway's own limit (docs/configuration.md).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from endpoints.errors import PayloadTooLarge


def read_limited(stream: Any, parser_context: Any) -> bytes:
    """The request body, or PayloadTooLarge when it is over ``API_MAX_BODY_BYTES``."""
    limit = int(settings.API_MAX_BODY_BYTES)
    request = (parser_context or {}).get("request")
    declared = request.META.get("CONTENT_LENGTH") if request is not None else None
    too_large = PayloadTooLarge(
        f"The request body exceeds the API's limit of {limit} bytes (API_MAX_BODY_BYTES)."
    )
    try:
        if declared and int(declared) > limit:
            raise too_large
    except ValueError:
        raise ParseError("Invalid Content-Length header.") from None
    data = stream.read(limit + 1) if stream is not None else b""
    if len(data) > limit:
        raise too_large
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8", errors="replace")
        return json.loads(text, parse_constant=_no_constants) if data else {}
    except ValueError as exc:
        raise ParseError(f"The request body must be JSON: {exc}") from exc


class LimitedJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type: str | None = None, parser_context: Any = None) -> Any:
        return _json(read_limited(stream, parser_context))


class JsonAsFormParser(BaseParser):
    media_type = "application/x-www-form-urlencoded"

    def parse(self, stream, media_type: str | None = None, parser_context: Any = None) -> Any:
        return _json(read_limited(stream, parser_context))


PARSERS = [LimitedJSONParser, JsonAsFormParser]
