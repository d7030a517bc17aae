"""Tokens, per-endpoint permissions and service principals through the API."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from endpoints.auth import token_for
from endpoints.models import AccessToken, EndpointPermission, ServicePrincipal, ServingEndpoint
from tests.support.api import assert_error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

TOKEN = "/api/2.0/token/"
V2 = "/api/2.0/preview/mlflow/endpoints-v2/"
PRINCIPALS = "/api/2.0/service-principals/"
TOKEN_INFO_KEYS = {
    "token_id",
    "comment",
    "prefix",
    "creation_time",
    "expiry_time",
    "last_used_time",
}


@pytest.fixture
def endpoint(owner) -> ServingEndpoint:
    return ServingEndpoint.objects.create(registered_model_name="ElasticNet", creator=owner)


# --- tokens ---------------------------------------------------------------------------------


def test_token_create_shows_the_token_once_and_it_works(as_user, member):
    api = as_user(member)
    response = api.post(
        TOKEN + "create", {"comment": "ci", "lifetime_seconds": 3600}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"token_value", "token_info"}
    assert set(body["token_info"]) == TOKEN_INFO_KEYS
    value = body["token_value"]
    assert value.startswith("sui_")
    assert body["token_info"]["comment"] == "ci"
    assert value.startswith(body["token_info"]["prefix"])
    info = body["token_info"]
    assert info["expiry_time"] - info["creation_time"] == pytest.approx(3600 * 1000, abs=2000)
    assert token_for(value).user == member
    # Never again: the list shows no token values.
    listed = api.get(TOKEN + "list").json()["token_infos"]
    created = next(t for t in listed if t["token_id"] == info["token_id"])
    assert value not in str(listed)
    assert set(created) == TOKEN_INFO_KEYS


def test_token_without_lifetime_never_expires(as_user, member):
    body = as_user(member).post(TOKEN + "create", {}, format="json").json()
    assert body["token_info"]["expiry_time"] == -1
    assert body["token_info"]["comment"] == ""


@pytest.mark.parametrize(
    "payload",
    [{"lifetime_seconds": 0}, {"lifetime_seconds": "60"}, {"comment": 5}, {"comment": None}],
)
def test_token_create_rejects_bad_arguments(as_user, member, payload):
    response = as_user(member).post(TOKEN + "create", payload, format="json")
    assert_error(response, 400, "INVALID_PARAMETER_VALUE")


def test_token_list_shows_only_own_active_tokens(as_user, make_token, member, outsider):
    make_token(outsider, name="not mine")
    api = as_user(member)  # the token this client uses
    api.post(TOKEN + "create", {"comment": "second"}, format="json")
    revoked = api.post(TOKEN + "create", {"comment": "revoked"}, format="json").json()
    api.post(TOKEN + "delete", {"token_id": revoked["token_info"]["token_id"]}, format="json")
    comments = sorted(t["comment"] for t in api.get(TOKEN + "list").json()["token_infos"])
    assert comments == ["", "second"]


def test_token_delete_revokes(as_user, member):
    api = as_user(member)
    created = api.post(TOKEN + "create", {"comment": "short"}, format="json").json()
    response = api.post(
        TOKEN + "delete", {"token_id": created["token_info"]["token_id"]}, format="json"
    )
    assert response.status_code == 200
    assert response.json() == {}
    assert token_for(created["token_value"]) is None
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {created['token_value']}")
    assert_error(revoked.get(V2 + "list"), 401, "UNAUTHENTICATED")


def test_token_delete_of_someone_elses_token_is_not_found(as_user, make_token, member, outsider):
    make_token(outsider)
    theirs = AccessToken.objects.get(user=outsider)
    response = as_user(member).post(TOKEN + "delete", {"token_id": str(theirs.pk)}, format="json")
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_token_delete_needs_a_numeric_id(as_user, member):
    for payload in ({}, {"token_id": "abc"}, {"token_id": 12}):
        response = as_user(member).post(TOKEN + "delete", payload, format="json")
        assert_error(response, 400, "INVALID_PARAMETER_VALUE")


def test_token_calls_need_authentication():
    assert_error(APIClient().post(TOKEN + "create", {}, format="json"), 401, "UNAUTHENTICATED")
    assert_error(APIClient().get(TOKEN + "list"), 401, "UNAUTHENTICATED")


# --- permissions --------------------------------------------------------------------------------


def test_get_permissions_lists_creator_and_grants(as_user, owner, member, endpoint):
    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    response = as_user(member).get(V2 + "get-permissions", {"registered_model_name": "ElasticNet"})
    assert response.status_code == 200
    assert response.json() == {
        "registered_model_name": "ElasticNet",
        "access_control_list": [
            {"user_name": "alice", "permission_level": "CAN_MANAGE", "inherited": True},
            {"user_name": "bob", "permission_level": "CAN_QUERY", "inherited": False},
        ],
    }


def test_get_permissions_of_hidden_endpoint_is_not_found(as_user, outsider, endpoint):
    response = as_user(outsider).get(
        V2 + "get-permissions", {"registered_model_name": "ElasticNet"}
    )
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")


def test_set_permissions_grants_changes_and_removes(as_user, owner, member, outsider, endpoint):
    api = as_user(owner)
    response = api.post(
        V2 + "set-permissions",
        {
            "registered_model_name": "ElasticNet",
            "access_control_list": [
                {"user_name": "bob", "permission_level": "CAN_QUERY"},
                {"user_name": "eve", "permission_level": "CAN_VIEW"},
            ],
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    levels = {e["user_name"]: e["permission_level"] for e in response.json()["access_control_list"]}
    assert levels == {"alice": "CAN_MANAGE", "bob": "CAN_QUERY", "eve": "CAN_VIEW"}
    # The new viewer now sees the endpoint.
    status = as_user(outsider).get(V2 + "get-status", {"registered_model_name": "ElasticNet"})
    assert status.status_code == 200
    api.post(
        V2 + "set-permissions",
        {
            "registered_model_name": "ElasticNet",
            "access_control_list": [
                {"user_name": "eve", "permission_level": None},
                {"user_name": "bob", "permission_level": "CAN_MANAGE"},
            ],
        },
        format="json",
    )
    assert dict(EndpointPermission.objects.values_list("user__username", "level")) == {
        "bob": "CAN_MANAGE"
    }


def test_set_permissions_needs_manage(as_user, owner, member, endpoint):
    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    response = as_user(member).post(
        V2 + "set-permissions",
        {
            "registered_model_name": "ElasticNet",
            "access_control_list": [{"user_name": "bob", "permission_level": "CAN_MANAGE"}],
        },
        format="json",
    )
    assert_error(response, 403, "PERMISSION_DENIED")
    assert EndpointPermission.objects.get(user=member).level == "CAN_QUERY"


def test_set_permissions_with_an_unknown_user_changes_nothing(as_user, owner, member, endpoint):
    response = as_user(owner).post(
        V2 + "set-permissions",
        {
            "registered_model_name": "ElasticNet",
            "access_control_list": [
                {"user_name": "bob", "permission_level": "CAN_VIEW"},
                {"user_name": "nobody", "permission_level": "CAN_VIEW"},
            ],
        },
        format="json",
    )
    body = assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")
    assert "nobody" in body["message"]
    assert not EndpointPermission.objects.exists()


def test_set_permissions_rejects_an_unknown_level(as_user, owner, endpoint):
    response = as_user(owner).post(
        V2 + "set-permissions",
        {
            "registered_model_name": "ElasticNet",
            "access_control_list": [{"user_name": "bob", "permission_level": "CAN_OWN"}],
        },
        format="json",
    )
    body = assert_error(response, 400, "INVALID_PARAMETER_VALUE")
    assert "access_control_list[0].permission_level" in body["message"]


# --- service principals ----------------------------------------------------------------------


def test_admin_creates_a_service_principal_and_its_token(as_user, admin_user, owner, endpoint):
    api = as_user(admin_user)
    response = api.post(
        PRINCIPALS + "create", {"user_name": "ci-bot", "display_name": "CI"}, format="json"
    )
    assert response.status_code == 200, response.content
    principal = response.json()["service_principal"]
    assert set(principal) == {"id", "user_name", "display_name", "creation_time"}
    assert principal["user_name"] == "ci-bot"
    listed = api.get(PRINCIPALS + "list").json()["service_principals"]
    assert [p["user_name"] for p in listed] == ["ci-bot"]
    token = api.post(
        PRINCIPALS + "create-token", {"user_name": "ci-bot", "comment": "deploys"}, format="json"
    ).json()
    assert set(token) == {"token_value", "token_info"}
    bot = APIClient()
    bot.credentials(HTTP_AUTHORIZATION=f"Bearer {token['token_value']}")
    # The principal holds permissions like a user.
    assert bot.get(V2 + "get-status", {"registered_model_name": "ElasticNet"}).status_code == 404
    as_user(owner).post(
        V2 + "set-permissions",
        {
            "registered_model_name": "ElasticNet",
            "access_control_list": [{"user_name": "ci-bot", "permission_level": "CAN_VIEW"}],
        },
        format="json",
    )
    assert bot.get(V2 + "get-status", {"registered_model_name": "ElasticNet"}).status_code == 200
    assert not ServicePrincipal.objects.get().user.has_usable_password()


def test_service_principals_are_for_admins(as_user, owner):
    api = as_user(owner)
    assert_error(
        api.post(PRINCIPALS + "create", {"user_name": "bot"}, format="json"),
        403,
        "PERMISSION_DENIED",
    )
    assert_error(api.get(PRINCIPALS + "list"), 403, "PERMISSION_DENIED")
    assert_error(
        api.post(PRINCIPALS + "create-token", {"user_name": "bot"}, format="json"),
        403,
        "PERMISSION_DENIED",
    )


def test_service_principal_name_clash_and_unknown_principal(as_user, admin_user, owner):
    api = as_user(admin_user)
    clash = api.post(PRINCIPALS + "create", {"user_name": "alice"}, format="json")
    assert_error(clash, 409, "RESOURCE_ALREADY_EXISTS")
    bad = api.post(PRINCIPALS + "create", {"user_name": "has space"}, format="json")
    assert_error(bad, 400, "INVALID_PARAMETER_VALUE")
    # alice is a person, not a service principal.
    unknown = api.post(PRINCIPALS + "create-token", {"user_name": "alice"}, format="json")
    assert_error(unknown, 404, "RESOURCE_DOES_NOT_EXIST")
