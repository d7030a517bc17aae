"""The admin writes through the services: nothing a service owns is edited in place."""

from __future__ import annotations

import pytest
from django.test import Client

from endpoints import kv, services
from endpoints.auth import token_for
from endpoints.models import (
    AccessToken,
    ComputeConfig,
    EndpointPermission,
    Event,
    EventType,
    ServingEndpoint,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

ADMIN = "/admin/endpoints"


@pytest.fixture
def client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def endpoint(owner) -> ServingEndpoint:
    endpoint = ServingEndpoint.objects.create(registered_model_name="ElasticNet", creator=owner)
    ComputeConfig.objects.create(endpoint=endpoint, stage="Staging", user_id="owner")
    return endpoint


def action(client: Client, model: str, name: str, pks: list[int]):
    return client.post(
        f"{ADMIN}/{model}/", {"action": name, "_selected_action": [str(pk) for pk in pks]}
    )


# --- endpoints ----------------------------------------------------------------------------------


def test_enabled_is_not_editable(client, endpoint):
    page = client.get(f"{ADMIN}/servingendpoint/{endpoint.pk}/change/")
    assert page.status_code == 200
    assert b'name="enabled"' not in page.content
    client.post(f"{ADMIN}/servingendpoint/{endpoint.pk}/change/", {"enabled": ""})
    endpoint.refresh_from_db()
    assert endpoint.enabled


def test_endpoints_are_neither_added_nor_deleted_in_the_admin(client, endpoint):
    assert client.get(f"{ADMIN}/servingendpoint/add/").status_code == 403
    assert client.post(f"{ADMIN}/servingendpoint/{endpoint.pk}/delete/").status_code == 403
    assert ServingEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_disable_action_goes_through_the_service(
    client, endpoint, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = action(client, "servingendpoint", "disable", [endpoint.pk])
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert not endpoint.enabled and endpoint.state == "PENDING"
    assert Event.objects.filter(endpoint=endpoint, type=EventType.ENDPOINT_DISABLED).exists()
    assert callbacks  # the gateways' cache bump and the reconcile request


def test_enable_action_goes_through_the_service(client, owner, model_name):
    endpoint = ServingEndpoint.objects.create(
        registered_model_name=model_name, creator=owner, enabled=False
    )
    action(client, "servingendpoint", "enable", [endpoint.pk])
    endpoint.refresh_from_db()
    assert endpoint.enabled
    assert Event.objects.filter(endpoint=endpoint, type=EventType.ENDPOINT_ENABLED).exists()
    assert {c.stage for c in endpoint.compute_configs.all()} == {"Staging", "Production"}


def test_a_refused_action_is_shown_and_changes_nothing(client, endpoint):
    endpoint.enabled = False
    endpoint.save()
    response = action(client, "servingendpoint", "disable", [endpoint.pk])
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "Serving is not enabled" in page
    assert not Event.objects.filter(endpoint=endpoint).exists()


# --- compute configs ----------------------------------------------------------------------------


def test_compute_configs_cannot_be_changed_in_place(client, endpoint):
    config = endpoint.compute_configs.get()
    url = f"{ADMIN}/computeconfig/{config.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200  # viewable
    assert b'name="workload_size"' not in page.content
    response = client.post(url, {"stage": "Staging", "workload_size": "Large"})
    assert response.status_code == 403
    config.refresh_from_db()
    assert config.workload_size == "Small"
    assert client.get(f"{ADMIN}/computeconfig/add/").status_code == 403
    assert client.post(f"{ADMIN}/computeconfig/{config.pk}/delete/").status_code == 403


def test_compute_configs_are_not_added_through_the_endpoint_page(client, endpoint):
    config = endpoint.compute_configs.get()
    response = client.post(
        f"{ADMIN}/servingendpoint/{endpoint.pk}/change/",
        {
            "compute_configs-TOTAL_FORMS": "2",
            "compute_configs-INITIAL_FORMS": "1",
            "compute_configs-0-id": str(config.pk),
            "compute_configs-0-endpoint": str(endpoint.pk),
            "compute_configs-1-endpoint": str(endpoint.pk),
            "compute_configs-1-stage": "Production",
            "compute_configs-1-workload_size": "Large",
            "permissions-TOTAL_FORMS": "0",
            "permissions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    assert list(endpoint.compute_configs.all()) == [config]


# --- permissions --------------------------------------------------------------------------------


def test_permission_added_in_the_admin_records_an_event_and_bumps_the_generation(
    client, endpoint, member, django_capture_on_commit_callbacks
):
    before = kv.current_generation()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"{ADMIN}/endpointpermission/add/",
            {"endpoint": endpoint.pk, "user": member.pk, "level": "CAN_QUERY"},
        )
    assert response.status_code == 302, response.content
    assert EndpointPermission.objects.get(endpoint=endpoint, user=member).level == "CAN_QUERY"
    event = Event.objects.get(endpoint=endpoint, type=EventType.PERMISSIONS_CHANGED)
    assert "bob granted CAN_QUERY" in event.message
    assert kv.current_generation() > before


def test_permission_changed_and_deleted_in_the_admin_go_through_the_service(
    client, endpoint, member, admin_user, django_capture_on_commit_callbacks
):
    grant = services.permission_set(endpoint=endpoint, user=member, level="CAN_VIEW", by=admin_user)
    url = f"{ADMIN}/endpointpermission/{grant.pk}/"
    before = kv.current_generation()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url + "change/", {"level": "CAN_MANAGE"})
    assert response.status_code == 302, response.content
    assert EndpointPermission.objects.get(pk=grant.pk).level == "CAN_MANAGE"
    assert kv.current_generation() > before

    before = kv.current_generation()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url + "delete/", {"post": "yes"})
    assert not EndpointPermission.objects.filter(pk=grant.pk).exists()
    assert kv.current_generation() > before
    messages = list(
        Event.objects.filter(type=EventType.PERMISSIONS_CHANGED).values_list("message", flat=True)
    )
    assert any("removed" in m for m in messages) and len(messages) == 3


def test_permissions_deleted_in_bulk_go_through_the_service(
    client, endpoint, member, outsider, admin_user, monkeypatch
):
    for user in (member, outsider):
        services.permission_set(endpoint=endpoint, user=user, level="CAN_VIEW", by=admin_user)
    removed = []
    real = services.permission_set
    monkeypatch.setattr(
        services,
        "permission_set",
        lambda **kw: removed.append(kw["user"]) or real(**kw),
    )
    pks = list(EndpointPermission.objects.values_list("pk", flat=True))
    client.post(
        f"{ADMIN}/endpointpermission/",
        {"action": "delete_selected", "_selected_action": pks, "post": "yes"},
    )
    assert not EndpointPermission.objects.exists()
    assert set(removed) == {member, outsider}


# --- tokens -------------------------------------------------------------------------------------


def test_token_revoked_in_the_admin_is_revoked_by_the_service(
    client, member, make_token, monkeypatch, django_capture_on_commit_callbacks
):
    plaintext = make_token(member)
    token = AccessToken.objects.get()
    calls = []
    real = services.token_revoke
    monkeypatch.setattr(
        services, "token_revoke", lambda **kw: calls.append(kw["token_id"]) or real(**kw)
    )
    before = kv.current_generation()
    with django_capture_on_commit_callbacks(execute=True):
        response = action(client, "accesstoken", "revoke", [token.pk])
    assert response.status_code == 302
    assert calls == [token.pk]
    assert token_for(plaintext) is None
    assert kv.current_generation() > before


def test_tokens_are_not_edited_added_or_deleted_in_the_admin(client, member, make_token):
    make_token(member)
    token = AccessToken.objects.get()
    page = client.get(f"{ADMIN}/accesstoken/{token.pk}/change/")
    assert b'name="revoked_at' not in page.content and b'name="expires_at' not in page.content
    assert client.get(f"{ADMIN}/accesstoken/add/").status_code == 403
    assert client.post(f"{ADMIN}/accesstoken/{token.pk}/delete/").status_code == 403
    assert token_for(make_token(member)) is not None
