"""Request body parsing: JSON, also when a client labels it as a form.

``curl -d '{"registered_model_name": "ElasticNet"}' …`` sends a JSON body with curl's
default ``application/x-www-form-urlencoded`` type; MLflow's serving API accepted that, so
scripts written for it work here unchanged. A body that is really a form is refused: the
API speaks JSON only.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, JSONParser


class JsonAsFormParser(BaseParser):
    media_type = "application/x-www-form-urlencoded"

    def parse(self, stream, media_type: str | None = None, parser_context: Any = None) -> Any:
        text = stream.read().decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ParseError(f"The request body must be JSON: {exc}") from exc


PARSERS = [JSONParser, JsonAsFormParser]
