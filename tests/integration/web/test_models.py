"""The Models list and the model page's Details tab with its stage drop-down."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from endpoints import registry, services
from endpoints.models import Event, EventType

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def row_of(html: str, name: str) -> str:
    start = html.index(f'href="/models/{name}/"')
    return html[start : html.index("</tr>", start)]


# --- models list --------------------------------------------------------------------------------


def test_models_list_shows_versions_stages_and_serving_off(member, model_name):
    html = logged_in(member).get("/").content.decode()
    row = row_of(html, model_name)
    assert "v1 · Production" in row and "v2 · Staging" in row
    assert ">Off</span>" in row


def test_models_list_shows_the_serving_state(owner, model_name):
    endpoint = services.endpoint_enable(name=model_name, user=owner)
    client = logged_in(owner)
    assert ">Pending</span>" in row_of(client.get("/").content.decode(), model_name)
    endpoint.state = "READY"
    endpoint.save()
    assert ">Ready</span>" in row_of(client.get("/").content.decode(), model_name)
    endpoint.state = "FAILED"
    endpoint.save()
    assert ">Failed</span>" in row_of(client.get("/").content.decode(), model_name)


def test_models_list_does_not_show_state_of_an_endpoint_the_user_cannot_see(
    owner, outsider, model_name
):
    services.endpoint_enable(name=model_name, user=owner)
    row = row_of(logged_in(outsider).get("/").content.decode(), model_name)
    assert ">Restricted</span>" in row


def test_models_list_requires_login():
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_models_list_is_get_only(member):
    assert logged_in(member).post("/").status_code == 405


# --- login --------------------------------------------------------------------------------------


def test_login_page_logs_in_and_goes_to_the_models(owner):
    client = Client()
    assert b"Log in" in client.get("/login/").content
    response = client.post("/login/", {"username": "alice", "password": "pw-alice-123"})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_login_with_a_wrong_password_says_so(owner):
    response = Client().post("/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"didn't match" in response.content


# --- model page: Details tab and transitions ----------------------------------------------------


def test_model_page_lists_versions_with_a_stage_drop_down(member, model_name):
    html = logged_in(member).get(f"/models/{model_name}/").content.decode()
    assert 'data-testid="stage-1">Production' in html
    assert 'data-testid="stage-2">Staging' in html
    assert 'id="stage-select-2"' in html
    assert "Archive existing versions" in html
    assert f'href="/models/{model_name}/serving/"' in html


def test_model_page_of_unknown_model_is_404(member, redis_server):
    (Path(settings.VAR_DIR) / "mlflow").mkdir(parents=True, exist_ok=True)
    assert logged_in(member).get("/models/no-such-model/").status_code == 404


def test_transition_moves_the_version_and_archives_the_others(owner, model_name):
    client = logged_in(owner)
    response = client.post(
        f"/models/{model_name}/transition/",
        {"version": "2", "stage": "Production", "archive_existing_versions": "on"},
    )
    assert response.status_code == 302
    assert registry.get_version(model_name, "2").stage == "Production"
    assert registry.get_version(model_name, "1").stage == "Archived"
    page = client.get(response["Location"]).content.decode()
    assert "Version 2 is now in Production." in page


def test_transition_without_archiving_keeps_the_others(owner, model_name):
    logged_in(owner).post(
        f"/models/{model_name}/transition/", {"version": "2", "stage": "Production"}
    )
    assert registry.get_version(model_name, "1").stage == "Production"
    assert registry.get_version(model_name, "2").stage == "Production"


def test_transition_of_a_served_model_records_an_event(owner, model_name):
    endpoint = services.endpoint_enable(name=model_name, user=owner)
    logged_in(owner).post(f"/models/{model_name}/transition/", {"version": "1", "stage": "Staging"})
    assert Event.objects.filter(endpoint=endpoint, type=EventType.VERSION_STAGE_CHANGED).exists()


def test_transition_of_an_unknown_version_shows_the_error(owner, model_name):
    client = logged_in(owner)
    response = client.post(
        f"/models/{model_name}/transition/", {"version": "9", "stage": "Staging"}
    )
    page = client.get(response["Location"]).content.decode()
    assert "does not exist" in page


def test_transition_without_manage_permission_is_403(member, model_name):
    response = logged_in(member).post(
        f"/models/{model_name}/transition/", {"version": "2", "stage": "Production"}
    )
    assert response.status_code == 403
    assert registry.get_version(model_name, "2").stage == "Staging"


def test_transition_of_a_served_model_by_outsider_is_403(owner, outsider, model_name):
    services.endpoint_enable(name=model_name, user=owner)
    response = logged_in(outsider).post(
        f"/models/{model_name}/transition/", {"version": "2", "stage": "Production"}
    )
    assert response.status_code == 403


def test_transition_is_post_only(owner, model_name):
    assert logged_in(owner).get(f"/models/{model_name}/transition/").status_code == 405
