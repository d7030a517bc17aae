"""Tokens made with tokens, service principals' token expiry, and set-permissions telling
nothing about which accounts exist."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from endpoints import services
from endpoints.auth import token_for
from endpoints.models import AccessToken, EndpointPermission, ServicePrincipal, ServingEndpoint
from tests.support.api import assert_error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

TOKEN = "/api/2.0/token/"
V2 = "/api/2.0/preview/mlflow/endpoints-v2/"
PRINCIPALS = "/api/2.0/service-principals/"


def bearer(raw: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api


def create(api: APIClient, **body) -> dict:
    response = api.post(TOKEN + "create", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def row(raw: str) -> AccessToken:
    return AccessToken.objects.get(prefix=raw[:12])


# --- children of tokens ---------------------------------------------------------------------


def test_child_token_never_outlives_parent(member, make_token):
    parent_expiry = timezone.now() + timedelta(hours=1)
    parent = make_token(member, expires_at=parent_expiry)
    # Asking for a week, or for no expiry at all, gives the parent's expiry.
    longer = create(bearer(parent), lifetime_seconds=7 * 24 * 3600)["token_value"]
    forever = create(bearer(parent))["token_value"]
    for child in (longer, forever):
        assert row(child).expires_at == row(parent).expires_at
        assert row(child).parent == row(parent)
    # A shorter lifetime is kept.
    shorter = create(bearer(parent), lifetime_seconds=60)["token_value"]
    assert row(shorter).expires_at < parent_expiry


def test_revoking_the_parent_revokes_its_children_and_their_children(member, make_token):
    parent = make_token(member)
    child = create(bearer(parent))["token_value"]
    grandchild = create(bearer(child))["token_value"]
    sibling = make_token(member)
    assert token_for(grandchild) is not None
    session = Client()
    session.force_login(member)
    response = session.post(
        TOKEN + "delete", {"token_id": str(row(parent).pk)}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert token_for(child) is None and token_for(grandchild) is None
    assert token_for(sibling) is not None


def test_deleting_the_parent_deletes_its_children(member, make_token):
    parent = make_token(member)
    child = create(bearer(parent))["token_value"]
    row(parent).delete()
    assert not AccessToken.objects.filter(prefix=child[:12]).exists()
    assert token_for(child) is None


def test_a_token_made_in_a_browser_session_has_no_parent(member):
    session = Client()
    session.force_login(member)
    response = session.post(TOKEN + "create", {}, content_type="application/json")
    assert response.status_code == 200, response.content
    token = row(response.json()["token_value"])
    assert token.parent is None and token.expires_at is None


def test_a_service_principal_token_made_with_a_token_is_revoked_with_it(admin_user, make_token):
    admin_raw = make_token(admin_user)
    api = bearer(admin_raw)
    api.post(PRINCIPALS + "create", {"user_name": "ci-bot"}, format="json")
    response = api.post(PRINCIPALS + "create-token", {"user_name": "ci-bot"}, format="json")
    bot = response.json()["token_value"]
    assert token_for(bot) is not None
    services.token_revoke(token_id=row(admin_raw).pk, user=admin_user)
    assert token_for(bot) is None


# --- service principals' tokens expire --------------------------------------------------------


def test_service_principal_tokens_expire_by_default(admin_user, settings):
    principal = services.service_principal_create(username="ci-bot", by=admin_user)
    token, _ = services.service_principal_token_create(principal=principal, by=admin_user)
    days = settings.SERVING["SERVICE_PRINCIPAL_TOKEN_DAYS"]
    assert days > 0
    expected = timezone.now() + timedelta(days=days)
    assert abs((token.expires_at - expected).total_seconds()) < 60
    # An explicit expiry is kept; 0 days means no default expiry.
    chosen = timezone.now() + timedelta(days=3)
    token, _ = services.service_principal_token_create(
        principal=principal, by=admin_user, expires_at=chosen
    )
    assert token.expires_at == chosen
    settings.SERVING = {**settings.SERVING, "SERVICE_PRINCIPAL_TOKEN_DAYS": 0}
    token, _ = services.service_principal_token_create(principal=principal, by=admin_user)
    assert token.expires_at is None


def test_service_principal_token_through_the_api_has_the_default_expiry(admin_user, as_user):
    api = as_user(admin_user)
    api.post(PRINCIPALS + "create", {"user_name": "ci-bot"}, format="json")
    body = api.post(PRINCIPALS + "create-token", {"user_name": "ci-bot"}, format="json").json()
    assert body["token_info"]["expiry_time"] > 0
    assert ServicePrincipal.objects.get().user.access_tokens.get().expires_at is not None


# --- set-permissions and account names --------------------------------------------------------


@pytest.fixture
def endpoint(owner) -> ServingEndpoint:
    return ServingEndpoint.objects.create(registered_model_name="ElasticNet", creator=owner)


def _grant(api: APIClient, user_name: str):
    return api.post(
        V2 + "set-permissions",
        {
            "registered_model_name": "ElasticNet",
            "access_control_list": [{"user_name": user_name, "permission_level": "CAN_VIEW"}],
        },
        format="json",
    )


def test_set_permissions_does_not_reveal_unknown_user(as_user, owner, endpoint, django_user_model):
    django_user_model.objects.create_user(
        "gone", "gone@example.com", "pw-gone-123", is_active=False
    )
    api = as_user(owner)  # manages the endpoint, may not list users
    unknown = _grant(api, "nobody")
    inactive = _grant(api, "gone")
    assert unknown.status_code == inactive.status_code == 404
    first = assert_error(unknown, 404, "RESOURCE_DOES_NOT_EXIST")["message"]
    second = assert_error(inactive, 404, "RESOURCE_DOES_NOT_EXIST")["message"]
    assert first.replace("nobody", "NAME") == second.replace("gone", "NAME")
    assert not EndpointPermission.objects.exists()


def test_set_permissions_tells_an_admin_that_an_account_is_deactivated(
    as_user, admin_user, endpoint, django_user_model
):
    django_user_model.objects.create_user(
        "gone", "gone@example.com", "pw-gone-123", is_active=False
    )
    body = assert_error(_grant(as_user(admin_user), "gone"), 404, "RESOURCE_DOES_NOT_EXIST")
    assert "deactivated" in body["message"]


def test_set_permissions_without_manage_says_nothing_about_names(
    as_user, member, endpoint, owner, django_user_model
):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_VIEW", by=owner)
    api = as_user(member)
    known = _grant(api, "alice")
    unknown = _grant(api, "nobody")
    assert known.status_code == unknown.status_code == 403
    assert known.json() == unknown.json()
