"""The API against its own OpenAPI schema, on the real web server.

schemathesis generates requests for every operation of ``/api/schema/`` (valid and
invalid ones) and runs all its checks on the answers: no server error, status codes and
bodies as documented, invalid data rejected, valid data accepted, authentication enforced.
After every generated call the token it was sent with must still authenticate, and a read
sent again must answer with the same status. A second user, who holds no permission on the
owner's endpoint, then replays every operation against the owner's objects: none may be
seen or changed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from django.conf import settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from endpoints import registry, services
from endpoints.models import (
    AccessToken,
    ComputeConfig,
    EndpointPermission,
    ServingEndpoint,
)
from tests.support.rows import add_version

# The endpoint rows are written by hand: the reconcile loop must not correct them meanwhile.
pytestmark = pytest.mark.usefixtures("reconcile_paused")

# These tests check shapes, not speed: a registry write (a stage transition that archives
# the stage's other versions) can wait well over 30 s on a machine busy with other tests.
TIMEOUT = 120

# The name the schema's examples use, so generated requests also reach a real endpoint.
MODEL = "ElasticNet"
# Ids far above any a generated ``token_id`` will name, so fuzzing token/delete cannot revoke
# the tokens the run authenticates with.
TOKEN_ID_BASE = 10**15


def _token(user, offset: int) -> tuple[AccessToken, str]:
    token, plaintext = services.token_create(user=user, name="schemathesis")
    AccessToken.objects.filter(pk=token.pk).update(id=TOKEN_ID_BASE + offset)
    return AccessToken.objects.get(pk=TOKEN_ID_BASE + offset), plaintext


@pytest.fixture
def api_world(transactional_db, web_server, owner, member, outsider, admin_user) -> dict[str, Any]:
    """The owner's enabled endpoint (with a served version), a service principal and
    everyone's tokens. ``member`` is there as the user the schema's examples name."""
    # The registry database exists before the web server's threads first open it.
    (Path(settings.VAR_DIR) / "mlflow").mkdir(parents=True, exist_ok=True)
    registry.search_models(max_results=1)
    endpoint = ServingEndpoint.objects.create(
        registered_model_name=MODEL, creator=owner, state="READY", state_message="Ready"
    )
    ComputeConfig.objects.create(endpoint=endpoint, stage="Staging", user_id="alice")
    add_version(endpoint, "1", "Staging")
    services.service_principal_create(username="ci-bot", by=admin_user)
    owner_token, owner_secret = _token(owner, 1)
    _, outsider_secret = _token(outsider, 2)
    _, admin_secret = _token(admin_user, 3)
    return {
        "base": web_server,
        "endpoint": endpoint,
        "owner_token": owner_token,
        "owner": {"Authorization": f"Bearer {owner_secret}"},
        "outsider": {"Authorization": f"Bearer {outsider_secret}"},
        "admin": {"Authorization": f"Bearer {admin_secret}"},
    }


def _generated_schema() -> dict[str, Any]:
    """The schema the server serves at /api/schema/, generated here at collection time (the
    server is not up yet then); a test below checks that the two are the same."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    return json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(public=True)))


SCHEMA = _generated_schema()
schema = schemathesis.openapi.from_dict(SCHEMA)

FUZZ = hypothesis_settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


LIST = "/api/2.0/preview/mlflow/endpoints-v2/list"
STATEFUL_WRITES = (
    "/update-compute-config",
    "/update-traffic-split",
    "/promote-traffic-split",
    "/rollback-traffic-split",
    "/registered-models/alias",
)


def assert_still_authenticates(base: str, headers: dict[str, str]) -> None:
    response = requests.get(base + LIST, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, ("the token no longer authenticates", response.text)


def fuzz(
    case: schemathesis.Case,
    world: dict[str, Any],
    identity: str,
    excluded_checks: Sequence[Callable] = (),
) -> None:
    """Send one generated call and validate the answer against the schema; then check the
    state it left: the token it was sent with still authenticates, and a read repeated with
    that token answers with the same status (reads change nothing)."""
    headers = world[identity]
    response = case.call_and_validate(
        base_url=world["base"],
        headers=headers,
        excluded_checks=list(excluded_checks),
        timeout=TIMEOUT,
    )
    assert_still_authenticates(world["base"], headers)
    if case.method.upper() == "GET":
        again = case.call(base_url=world["base"], headers=headers, timeout=TIMEOUT)
        assert again.status_code == response.status_code, (case.path, again.text)


def test_the_server_serves_the_schema_that_is_fuzzed(web_server):
    served = requests.get(web_server + "/api/schema/?format=json", timeout=TIMEOUT)
    assert served.status_code == 200
    assert served.json() == SCHEMA


@schema.exclude(tag="Service principals").parametrize()
@FUZZ
def test_api_conforms_to_its_schema_as_the_owner(case, api_world):
    excluded = []
    if case.operation.path.endswith("/restart-compute-config-update"):
        # Valid arguments, but the stage has no failed rollout to retry: a documented 400.
        excluded.append(positive_data_acceptance)
    if case.operation.path.endswith(STATEFUL_WRITES):
        # Valid arguments that the state refuses with a documented 400/404: a stage and an
        # alias both given (the schema cannot say "exactly one"), a split over versions
        # that are not READY or a target that is not served, an alias MLflow reserves, a
        # version the registry does not have.
        excluded.append(positive_data_acceptance)
    fuzz(case, api_world, "owner", excluded)


@schema.include(tag="Service principals").parametrize()
@FUZZ
def test_service_principal_calls_conform_to_the_schema_as_an_admin(case, api_world):
    fuzz(case, api_world, "admin")


def test_the_check_after_each_fuzzed_call_fails_once_its_token_is_revoked(api_world):
    """What the fuzz tests check after every call is able to fail: a token revoked on the
    server no longer authenticates there."""
    assert_still_authenticates(api_world["base"], api_world["owner"])
    revoked = requests.post(
        api_world["base"] + "/api/2.0/token/delete",
        json={"token_id": str(api_world["owner_token"].pk)},
        headers=api_world["owner"],
        timeout=TIMEOUT,
    )
    assert revoked.status_code == 200, revoked.text
    with pytest.raises(AssertionError, match="no longer authenticates"):
        assert_still_authenticates(api_world["base"], api_world["owner"])


# --- object-level authorization ------------------------------------------------------------

# A valid value for each argument the operations take, naming the owner's objects.
VALID = {
    "registered_model_name": MODEL,
    "name": MODEL,
    "endpoint_version_name": "1",
    "version": "1",
    "stage": "Staging",
    "desired_workload_config_spec": {"workload_size_id": "Medium"},
    "access_control_list": [{"user_name": "eve", "permission_level": "CAN_MANAGE"}],
    "replica_id": "r-none",
    "alias": "champion",
    "served_aliases": ["champion"],
    "traffic": [
        {"endpoint_version_name": "1", "traffic_percentage": 50},
        {"endpoint_version_name": "2", "traffic_percentage": 50},
    ],
    "enabled": True,
}
OWNED_ARGUMENTS = {"registered_model_name", "name", "token_id"}


def _operations(base: str) -> list[tuple[str, str, dict[str, Any]]]:
    spec = requests.get(base + "/api/schema/?format=json", timeout=TIMEOUT).json()
    return [
        (path, method, operation)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    ]


def _arguments(operation: dict[str, Any], spec_components: dict[str, Any]) -> set[str]:
    names = {p["name"] for p in operation.get("parameters", [])}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body:
        ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
        names |= set(spec_components[ref]["properties"])
    return names


def _call(base: str, path: str, method: str, args: dict[str, Any], headers: dict[str, str]):
    if method == "get":
        return requests.get(base + path, params=args, headers=headers, timeout=TIMEOUT)
    return requests.request(
        method.upper(), base + path, json=args, headers=headers, timeout=TIMEOUT
    )


def test_a_user_without_permission_cannot_see_or_change_the_owners_objects(api_world):
    base = api_world["base"]
    spec = requests.get(base + "/api/schema/?format=json", timeout=TIMEOUT).json()
    components = spec["components"]["schemas"]
    owner_token_id = str(api_world["owner_token"].pk)
    checked = 0
    for path, method, operation in _operations(base):
        arguments = _arguments(operation, components)
        args = {k: v for k, v in VALID.items() if k in arguments}
        if "stage" in args:  # a stage or an alias, not both
            args.pop("alias", None)
        if "token_id" in arguments:
            args["token_id"] = owner_token_id
        response = _call(base, path, method, args, api_world["outsider"])
        label = f"{method.upper()} {path}"
        assert response.status_code < 500, (label, response.text)
        if arguments & OWNED_ARGUMENTS:
            assert response.status_code in (403, 404), (label, response.status_code, response.text)
            checked += 1
        else:
            # Calls that name no object answer only with the caller's own data.
            assert MODEL not in response.text, label
            assert owner_token_id not in response.text, label
    assert checked >= 15
    # Nothing of the owner's changed.
    endpoint = ServingEndpoint.objects.get(pk=api_world["endpoint"].pk)
    assert endpoint.enabled
    assert not EndpointPermission.objects.exists()
    assert ComputeConfig.objects.filter(endpoint=endpoint).count() == 1
    assert AccessToken.objects.get(pk=api_world["owner_token"].pk).revoked_at is None


def test_the_owner_reads_what_the_outsider_may_not(api_world):
    """The same reads as the owner succeed: the refusals above are about permission."""
    base = api_world["base"]
    spec = requests.get(base + "/api/schema/?format=json", timeout=TIMEOUT).json()
    components = spec["components"]["schemas"]
    for path, method, operation in _operations(base):
        arguments = _arguments(operation, components)
        if method != "get" or "registered_model_name" not in arguments:
            continue
        # No replica_id: "r-none" names no replica, and the owner would rightly get a 404.
        args = {k: v for k, v in VALID.items() if k in arguments and k != "replica_id"}
        response = _call(base, path, method, args, api_world["owner"])
        assert response.status_code == 200, (path, response.text)


def test_the_docs_page_works_offline(api_world):
    page = requests.get(api_world["base"] + "/api/docs/", timeout=TIMEOUT)
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page.text
    bundle = requests.get(
        api_world["base"] + "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        timeout=TIMEOUT,
    )
    assert bundle.status_code == 200


def test_basic_auth_with_the_token_user_works_on_the_server(api_world):
    secret = api_world["owner"]["Authorization"].removeprefix("Bearer ")
    basic = base64.b64encode(f"token:{secret}".encode()).decode()
    response = requests.get(
        api_world["base"] + "/api/2.0/preview/mlflow/endpoints-v2/get-status",
        params={"registered_model_name": MODEL},
        headers={"Authorization": f"Basic {basic}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.json()["endpoint_status"]["state"] == "READY"
