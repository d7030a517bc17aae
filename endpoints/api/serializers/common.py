"""What the API's serializers share: JSON fields that convert nothing (a string where a
string is expected, a boolean where a boolean is, so what the OpenAPI schema promises is
exactly what is accepted; query parameters, always strings, convert as usual), the model,
version and target arguments, and the error and empty answers."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from endpoints.models import Stage

_NO_NUL = RegexValidator(r"^[^\x00]*$", "Must not contain NUL characters.")


DIGITS = RegexValidator(r"^[0-9]+$", "Must be a number, such as '1'.")


def is_json(field: serializers.Field) -> bool:
    """Whether the arguments came from a JSON body (typed) rather than a query string."""
    return field.root.context.get("source") == "json"


class Text(serializers.CharField):
    """A string that is not converted from other JSON types. ``example`` shows in the schema
    (``endpoints.api.schema.JsonSchema``)."""

    def __init__(self, *, example: str | None = None, **kwargs: Any) -> None:
        self.example = example
        kwargs.setdefault("trim_whitespace", False)
        if not kwargs.get("allow_blank", False):
            # Stated as a length so that the schema shows it too.
            kwargs.setdefault("min_length", 1)
        super().__init__(**kwargs)
        # A field with its own pattern already excludes NUL; the schema shows one pattern.
        if not any(isinstance(v, RegexValidator) for v in self.validators):
            self.validators.append(_NO_NUL)

    def to_internal_value(self, data: Any) -> str:
        if is_json(self) and not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Number(serializers.IntegerField):
    def to_internal_value(self, data: Any) -> int:
        if is_json(self) and (not isinstance(data, int) or isinstance(data, bool)):
            self.fail("invalid")
        return super().to_internal_value(data)


class Real(serializers.FloatField):
    """A JSON number, whole or not (never a string or a boolean)."""

    def to_internal_value(self, data: Any) -> float:
        if is_json(self) and (not isinstance(data, int | float) or isinstance(data, bool)):
            self.fail("invalid")
        return super().to_internal_value(data)


class Flag(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if is_json(self) and not isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class Choice(serializers.ChoiceField):
    def to_internal_value(self, data: Any) -> Any:
        if is_json(self) and data is not None and not isinstance(data, str):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


def model_name_field(**kwargs: Any) -> Text:
    return Text(
        max_length=256, help_text="Name of the registered model.", example="ElasticNet", **kwargs
    )


def version_field(**kwargs: Any) -> Text:
    return Text(
        max_length=18,
        validators=[DIGITS],
        help_text="A model version number, such as '1'.",
        example="1",
        **kwargs,
    )


class ModelNameRequest(serializers.Serializer):
    registered_model_name = model_name_field()


class VersionRequest(ModelNameRequest):
    endpoint_version_name = version_field()


class TargetRequest(ModelNameRequest):
    """A stage, or (instead) an MLflow alias served by the endpoint."""

    stage = Choice(choices=Stage.choices, required=False)
    alias = Text(max_length=255, required=False, help_text="An MLflow alias instead of a stage.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("stage" in attrs) == ("alias" in attrs):
            raise serializers.ValidationError("Give exactly one of 'stage' and 'alias'.")
        attrs["target"] = attrs.get("stage") or "@" + attrs["alias"].removeprefix("@")
        return attrs


class ErrorResponse(serializers.Serializer):
    error_code = serializers.CharField()
    message = serializers.CharField()


class EmptyResponse(serializers.Serializer):
    pass
