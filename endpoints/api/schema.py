"""OpenAPI details drf-spectacular cannot infer: the token security schemes, JSON only."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "endpoints.api.authentication.TokenAuthentication"
    name = ["tokenAuth", "tokenBasicAuth"]

    def get_security_requirement(self, auto_schema: AutoSchema) -> list[dict[str, list[Any]]]:
        # Either header works: the two schemes are alternatives.
        return [{"tokenAuth": []}, {"tokenBasicAuth": []}]

    def get_security_definition(self, auto_schema: AutoSchema) -> list[dict[str, Any]]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "description": "Authorization: Bearer <token> (a personal access token or a "
                "service principal's token).",
            },
            {
                "type": "http",
                "scheme": "basic",
                "description": "HTTP basic auth with the user name 'token' and the token as "
                "password: curl -u token:$TOKEN …",
            },
        ]


class JsonSchema(AutoSchema):
    """Bodies are JSON. A JSON body sent as a form (curl's default) is accepted too, but
    only JSON is documented."""

    def map_parsers(self) -> list[str]:
        return ["application/json"]

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        example = getattr(field, "example", None)
        if schema is not None and example is not None:
            schema = {**schema, "example": example}
        return schema
