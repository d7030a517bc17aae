from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints import services
from endpoints.auth import has_permission, token_for, token_from_authorization
from endpoints.models import AccessToken, PermissionLevel, ServingEndpoint, hash_token


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_bearer_header_gives_the_token():
    assert token_from_authorization("Bearer sui_abc") == "sui_abc"


def test_basic_auth_with_user_token_gives_the_password():
    assert token_from_authorization(basic("token", "sui_abc")) == "sui_abc"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Token sui_abc",
        basic("alice", "sui_abc"),
        "Basic !!!notbase64",
        # Tokens are ASCII: anything else is malformed (the header arrives as latin-1).
        "Bearer tökén",
        "Bearer " + "tökén €".encode().decode("latin-1"),
        basic("token", "tökén"),
    ],
)
def test_other_headers_give_no_token(header):
    assert token_from_authorization(header) is None


@pytest.mark.django_db
def test_token_is_stored_only_as_its_hash(owner):
    token, plaintext = services.token_create(user=owner, name="ci")
    assert plaintext.startswith("sui_")
    assert token.token_hash == hash_token(plaintext)
    stored = AccessToken.objects.filter(pk=token.pk).values()[0]
    assert plaintext not in {str(v) for v in stored.values()}
    assert token_for(plaintext).user == owner


@pytest.mark.django_db
def test_revoked_and_expired_tokens_are_rejected(owner):
    token, plaintext = services.token_create(user=owner)
    services.token_revoke(token_id=token.pk, user=owner)
    assert token_for(plaintext) is None
    expiring, plaintext2 = services.token_create(
        user=owner, expires_at=timezone.now() + timedelta(seconds=60)
    )
    AccessToken.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(1))
    assert token_for(plaintext2) is None


@pytest.mark.django_db
def test_permission_levels_are_ordered(owner, member, outsider, admin_user):
    endpoint = ServingEndpoint.objects.create(registered_model_name="m", creator=owner)
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    assert has_permission(owner, endpoint, PermissionLevel.CAN_MANAGE)
    assert has_permission(admin_user, endpoint, PermissionLevel.CAN_MANAGE)
    assert has_permission(member, endpoint, PermissionLevel.CAN_VIEW)
    assert has_permission(member, endpoint, PermissionLevel.CAN_QUERY)
    assert not has_permission(member, endpoint, PermissionLevel.CAN_MANAGE)
    assert not has_permission(outsider, endpoint, PermissionLevel.CAN_VIEW)
