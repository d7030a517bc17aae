"""DRF authentication with the same tokens as the scoring gateway."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from endpoints.auth import token_for, token_from_authorization
from endpoints.models import AccessToken


class TokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <token>`` or basic auth with user ``token``."""

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, AccessToken] | None:
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        raw = token_from_authorization(header)
        if raw is None:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Bearer <token>' or basic auth with user "
                "'token' and the token as password."
            )
        token = token_for(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked access token.")
        return (token.user, token)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
