"""Access tokens, service principals (admins) and endpoint permissions pages."""

from __future__ import annotations

import re
import uuid
import warnings
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from endpoints import registry, services
from endpoints.auth import permission_level, token_for
from endpoints.models import AccessToken, EndpointPermission, ServicePrincipal

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

TOKEN_RE = re.compile(r'<code id="new-token">(sui_[\w-]+)</code>')


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- access tokens ------------------------------------------------------------------------------


def test_token_is_shown_once_and_then_listed_by_prefix(member):
    client = logged_in(member)
    response = client.post("/tokens/", {"name": "laptop", "expires_in_days": "30"})
    assert response.status_code == 200
    plaintext = TOKEN_RE.search(response.content.decode()).group(1)
    assert token_for(plaintext).user == member
    listed = client.get("/tokens/").content.decode()
    assert plaintext not in listed
    assert f"<code>{plaintext[:12]}…</code>" in listed
    assert "laptop" in listed


def test_token_form_rejects_a_bad_expiry(member):
    response = logged_in(member).post("/tokens/", {"expires_in_days": "0"})
    assert response.status_code == 400
    assert not AccessToken.objects.exists()


def test_empty_token_list_says_so(member):
    assert b"No tokens yet" in logged_in(member).get("/tokens/").content


def test_revoke_asks_for_confirmation_and_revokes(member, make_token):
    plaintext = make_token(member)
    client = logged_in(member)
    assert b'data-confirm="Revoke token' in client.get("/tokens/").content
    token = AccessToken.objects.get()
    response = client.post(f"/tokens/{token.pk}/revoke/")
    assert response.status_code == 302
    assert token_for(plaintext) is None
    assert b"No tokens yet" in client.get("/tokens/").content


def test_revoking_someone_elses_token_is_404(member, outsider, make_token):
    plaintext = make_token(member)
    token = AccessToken.objects.get()
    assert logged_in(outsider).post(f"/tokens/{token.pk}/revoke/").status_code == 404
    assert token_for(plaintext) is not None


def test_others_tokens_are_not_listed(member, outsider, make_token):
    plaintext = make_token(member)
    assert plaintext[:12].encode() not in logged_in(outsider).get("/tokens/").content


def test_revoke_is_post_only(member, make_token):
    make_token(member)
    token = AccessToken.objects.get()
    assert logged_in(member).get(f"/tokens/{token.pk}/revoke/").status_code == 405


def test_tokens_require_login():
    assert Client().get("/tokens/").status_code == 302


# --- service principals -------------------------------------------------------------------------


def test_admin_creates_a_principal_and_a_token_for_it(admin_user):
    client = logged_in(admin_user)
    response = client.post(
        "/service-principals/", {"username": "nightly-job", "display_name": "Nightly"}
    )
    assert response.status_code == 302
    principal = ServicePrincipal.objects.get()
    assert not principal.user.has_usable_password()
    response = client.post(f"/service-principals/{principal.pk}/tokens/", {"name": "ci"})
    plaintext = TOKEN_RE.search(response.content.decode()).group(1)
    assert token_for(plaintext).user == principal.user
    # It expires by default, and the page says when.
    expires_at = token_for(plaintext).expires_at
    assert expires_at is not None
    assert f"It expires on {expires_at:%Y-%m-%d}." in response.content.decode()
    listed = client.get("/service-principals/").content.decode()
    assert "nightly-job" in listed and f"{plaintext[:12]}…" in listed and plaintext not in listed


def test_duplicate_principal_name_shows_the_error(admin_user, member):
    response = logged_in(admin_user).post("/service-principals/", {"username": "bob"})
    assert response.status_code == 409
    assert b"already exists" in response.content


def test_principals_are_for_admins_only(owner):
    client = logged_in(owner)
    assert client.get("/service-principals/").status_code == 403
    assert client.post("/service-principals/", {"username": "x"}).status_code == 403
    assert not ServicePrincipal.objects.exists()


def test_principal_token_is_for_admins_only(admin_user, owner):
    principal = services.service_principal_create(username="job", by=admin_user)
    response = logged_in(owner).post(f"/service-principals/{principal.pk}/tokens/")
    assert response.status_code == 403
    assert not AccessToken.objects.exists()


def test_admin_revokes_a_principals_token(admin_user, make_token):
    principal = services.service_principal_create(username="job", by=admin_user)
    plaintext = make_token(principal.user)
    token = AccessToken.objects.get()
    response = logged_in(admin_user).post(f"/tokens/{token.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == "/service-principals/"
    assert token_for(plaintext) is None


# --- endpoint permissions -----------------------------------------------------------------------


@pytest.fixture
def endpoint(owner, tmp_path: Path):
    (Path(settings.VAR_DIR) / "mlflow").mkdir(parents=True, exist_ok=True)
    name = f"ui-perm-{uuid.uuid4().hex[:8]}"
    client = registry.client()
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, version.version, "Production")
    yield services.endpoint_enable(name=name, user=owner)
    client.delete_registered_model(name)


def perms_url(endpoint) -> str:
    return f"/models/{endpoint.registered_model_name}/permissions/"


def test_manager_grants_and_revokes_a_level(owner, member, endpoint):
    client = logged_in(owner)
    response = client.post(perms_url(endpoint), {"username": "bob", "level": "CAN_QUERY"})
    assert response.status_code == 302
    assert permission_level(member, endpoint) == "CAN_QUERY"
    page = client.get(perms_url(endpoint)).content.decode()
    assert "bob" in page and "CAN_QUERY" in page and "data-confirm=" in page
    client.post(perms_url(endpoint), {"username": "bob", "level": ""})
    assert not EndpointPermission.objects.filter(user=member).exists()


def test_granting_to_an_unknown_user_says_so(owner, endpoint):
    response = logged_in(owner).post(
        perms_url(endpoint), {"username": "nobody", "level": "CAN_VIEW"}
    )
    assert response.status_code == 400
    assert b"No user with that name." in response.content


def test_the_permissions_page_answers_alike_for_unknown_and_inactive_users(
    owner, endpoint, django_user_model
):
    django_user_model.objects.create_user(
        "gone", "gone@example.com", "pw-gone-123", is_active=False
    )
    client = logged_in(owner)
    answers = [
        client.post(perms_url(endpoint), {"username": name, "level": "CAN_VIEW"})
        for name in ("nobody", "gone")
    ]
    assert [a.status_code for a in answers] == [400, 400]
    assert all(b"No user with that name." in a.content for a in answers)
    assert not EndpointPermission.objects.exists()


def test_permissions_tab_is_shown_to_managers_only(owner, member, endpoint):
    serving = f"/models/{endpoint.registered_model_name}/serving/"
    assert b">Permissions</a>" in logged_in(owner).get(serving).content
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    assert b">Permissions</a>" not in logged_in(member).get(serving).content


def test_permissions_need_manage(owner, member, endpoint):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    client = logged_in(member)
    assert client.get(perms_url(endpoint)).status_code == 403
    response = client.post(perms_url(endpoint), {"username": "bob", "level": "CAN_MANAGE"})
    assert response.status_code == 403
    assert permission_level(member, endpoint) == "CAN_QUERY"


def test_permissions_of_hidden_endpoint_are_404(outsider, endpoint):
    assert logged_in(outsider).get(perms_url(endpoint)).status_code == 404
