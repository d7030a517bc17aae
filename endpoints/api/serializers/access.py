"""Request parsing and response shapes of the API's access calls: tokens, permissions and
service principals (which have no shape in the selectors, so they are shaped here)."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from endpoints.models import AccessToken, PermissionLevel, ServicePrincipal

from .common import DIGITS, Choice, ModelNameRequest, Number, Text

MAX_TOKEN_LIFETIME_SECONDS = 10 * 365 * 24 * 3600


# --- requests ------------------------------------------------------------------------------


class TokenCreateRequest(serializers.Serializer):
    comment = Text(max_length=128, required=False, allow_blank=True, default="", example="ci")
    lifetime_seconds = Number(
        min_value=1,
        max_value=MAX_TOKEN_LIFETIME_SECONDS,
        required=False,
        allow_null=True,
        default=None,
        help_text="Seconds until the token expires; without it, it never expires.",
    )


class TokenDeleteRequest(serializers.Serializer):
    token_id = Text(max_length=18, validators=[DIGITS])


class AccessControlEntryRequest(serializers.Serializer):
    user_name = Text(max_length=150, example="bob")
    permission_level = Choice(
        choices=PermissionLevel.choices,
        allow_null=True,
        help_text="null removes the user's grant.",
    )


class SetPermissionsRequest(ModelNameRequest):
    access_control_list = serializers.ListField(child=AccessControlEntryRequest(), max_length=100)


class ServicePrincipalCreateRequest(serializers.Serializer):
    user_name = Text(
        max_length=150,
        validators=[RegexValidator(r"^[\w.@+-]+$", "Letters, digits and @ . + - _ only.")],
        example="ci-bot",
    )
    display_name = Text(
        max_length=256, required=False, allow_blank=True, default="", example="CI deployments"
    )


class ServicePrincipalTokenRequest(TokenCreateRequest):
    user_name = Text(
        max_length=150, help_text="The service principal's user name.", example="ci-bot"
    )


# --- responses -----------------------------------------------------------------------------


def _ms(value: Any) -> int | None:
    return int(value.timestamp() * 1000) if value is not None else None


class TokenInfo(serializers.Serializer):
    token_id = serializers.SerializerMethodField()
    comment = serializers.CharField(source="name", allow_blank=True)
    prefix = serializers.CharField(help_text="The token's first characters, to recognise it.")
    creation_time = serializers.SerializerMethodField()
    expiry_time = serializers.SerializerMethodField()
    last_used_time = serializers.SerializerMethodField()

    def get_token_id(self, token: AccessToken) -> str:
        return str(token.pk)

    def get_creation_time(self, token: AccessToken) -> int:
        return _ms(token.created_at) or 0

    def get_expiry_time(self, token: AccessToken) -> int:
        """Milliseconds since the epoch; -1 when the token never expires."""
        return _ms(token.expires_at) or -1

    def get_last_used_time(self, token: AccessToken) -> int | None:
        return _ms(token.last_used_at)


class TokenCreateResponse(serializers.Serializer):
    token_value = serializers.CharField(help_text="The token itself, shown only this once.")
    token_info = TokenInfo()


class TokenListResponse(serializers.Serializer):
    token_infos = TokenInfo(many=True)


class AccessControlEntry(serializers.Serializer):
    user_name = serializers.CharField()
    permission_level = serializers.ChoiceField(choices=PermissionLevel.choices)
    inherited = serializers.BooleanField(
        help_text="True for the endpoint's creator, who always manages it."
    )


class PermissionsResponse(serializers.Serializer):
    registered_model_name = serializers.CharField()
    access_control_list = AccessControlEntry(many=True)


class ServicePrincipalInfo(serializers.Serializer):
    id = serializers.SerializerMethodField()
    user_name = serializers.CharField(source="user.username")
    display_name = serializers.CharField(allow_blank=True)
    creation_time = serializers.SerializerMethodField()

    def get_id(self, principal: ServicePrincipal) -> str:
        return str(principal.pk)

    def get_creation_time(self, principal: ServicePrincipal) -> int:
        return _ms(principal.created_at) or 0


class ServicePrincipalResponse(serializers.Serializer):
    service_principal = ServicePrincipalInfo()


class ServicePrincipalListResponse(serializers.Serializer):
    service_principals = ServicePrincipalInfo(many=True)
