"""The authorization matrix: who may do what, on the real gateway, API and UI.

Identities: anonymous (no token), an outsider (no grant), CAN_VIEW, CAN_QUERY, CAN_MANAGE,
an admin, and a service principal holding CAN_QUERY. Each cell is one request through the
real web server; the expected status is the documented table in docs/security.md.
Management calls that would disturb the live deployment go to a spare endpoint row
(same grants); ``enable`` targets the already enabled model, so passing the permission
check shows as 409 (already enabled) and failing it as 403.
"""

from __future__ import annotations

import pytest
import requests

from tests.support import iris
from tests.support.deployment import IDENTITIES, SPARE, Live

V2 = "/api/2.0/preview/mlflow/endpoints-v2/"

# get-inference-table answered (200) without its rows.
NO_ROWS = "200, no rows"

# action -> expected status per identity, in IDENTITIES order:
# anonymous, outsider, viewer, querier, manager, admin, principal (CAN_QUERY)
MATRIX: dict[str, tuple[int | str, ...]] = {
    "read_status": (401, 404, 200, 200, 200, 200, 200),
    "list_versions": (401, 404, 200, 200, 200, 200, 200),
    "query_stage_url": (401, 404, 403, 200, 200, 200, 200),
    "query_version_url": (401, 404, 403, 200, 200, 200, 200),
    "enable": (401, 403, 403, 403, 403, 409, 403),
    "disable": (401, 404, 403, 403, 200, 200, 403),
    "update_compute_config": (401, 404, 403, 403, 200, 200, 403),
    "transition_stage": (401, 403, 403, 403, 200, 200, 403),
    "manage_own_tokens": (401, 200, 200, 200, 200, 200, 200),
    "read_permissions": (401, 404, 200, 200, 200, 200, 200),
    "change_permissions": (401, 404, 403, 403, 200, 200, 403),
    "manage_service_principals": (401, 403, 403, 403, 403, 200, 403),
    # Logs can hold request data a model printed: CAN_MANAGE reads them.
    "read_service_logs": (401, 404, 403, 403, 200, 200, 403),
    "read_build_logs": (401, 404, 403, 403, 200, 200, 403),
    # Captured requests are request data too: CAN_VIEW reads the inference table's
    # settings, its rows and the download need CAN_MANAGE.
    "read_inference_table_settings": (401, 404, 200, 200, 200, 200, 200),
    "read_captured_requests": (401, 404, NO_ROWS, NO_ROWS, 200, 200, NO_ROWS),
    # A page of the UI: without a session it sends to the sign-in page; a service
    # principal has no password, so it cannot sign in.
    "download_captured_requests": (302, 404, 403, 403, 200, 200, 302),
}
# Pages of the UI (HTML answers); the other actions are API calls (JSON errors).
UI_ACTIONS = {"download_captured_requests"}


def call(live: Live, action: str, identity: str) -> requests.Response:
    headers = live.headers(identity)
    api = live.base + "/api/"
    name = {"registered_model_name": live.model}
    spare = {"registered_model_name": SPARE}
    match action:
        case "read_status":
            return requests.get(api + V2[5:] + "get-status", params=name, headers=headers)
        case "list_versions":
            return requests.get(api + V2[5:] + "list-versions", params=name, headers=headers)
        case "query_stage_url":
            return requests.post(live.url("Production"), json=iris.SPLIT, headers=headers)
        case "query_version_url":
            return requests.post(live.url("1", "model"), json=iris.SPLIT, headers=headers)
        case "enable":
            return requests.post(api + V2[5:] + "enable", json=name, headers=headers)
        case "disable":
            response = requests.post(api + V2[5:] + "disable", json=spare, headers=headers)
            _re_enable_spare()
            return response
        case "update_compute_config":
            body = {
                **spare,
                "stage": "Staging",
                "desired_workload_config_spec": {
                    "workload_size_id": "Small",
                    "scale_to_zero_enabled": False,
                },
            }
            url = api + "2.0/preview/model-serving-api/endpoints-v2/update-compute-config"
            return requests.put(url, json=body, headers=headers)
        case "transition_stage":
            # Production -> Production without archiving: the registry does not change.
            body = {
                "name": live.model,
                "version": "1",
                "stage": "Production",
                "archive_existing_versions": False,
            }
            url = api + "2.0/mlflow/databricks/model-versions/transition-stage"
            return requests.post(url, json=body, headers=headers)
        case "manage_own_tokens":
            created = requests.post(api + "2.0/token/create", json={}, headers=headers)
            if created.status_code != 200:
                return created
            token_id = created.json()["token_info"]["token_id"]
            return requests.post(
                api + "2.0/token/delete", json={"token_id": token_id}, headers=headers
            )
        case "read_permissions":
            return requests.get(api + V2[5:] + "get-permissions", params=name, headers=headers)
        case "change_permissions":
            # Re-grants what the viewer already holds: allowed calls change nothing.
            body = {
                **spare,
                "access_control_list": [
                    {"user_name": live.users["viewer"].username, "permission_level": "CAN_VIEW"}
                ],
            }
            return requests.post(api + V2[5:] + "set-permissions", json=body, headers=headers)
        case "manage_service_principals":
            return requests.get(api + "2.0/service-principals/list", headers=headers)
        case "read_service_logs":
            body = {**name, "endpoint_version_name": "1"}
            return requests.post(api + V2[5:] + "get-version-logs", json=body, headers=headers)
        case "read_build_logs":
            body = {**name, "endpoint_version_name": "1"}
            url = api + V2[5:] + "get-version-build-logs"
            return requests.post(url, json=body, headers=headers)
        case "read_inference_table_settings" | "read_captured_requests":
            url = api + V2[5:] + "get-inference-table"
            return requests.get(url, params=name, headers=headers)
        case "download_captured_requests":
            url = f"{live.base}/models/{live.model}/serving/inference/download/"
            cookies = _signed_in(live, identity)
            return requests.get(url, cookies=cookies, allow_redirects=False, timeout=60)
    raise AssertionError(action)


def _signed_in(live: Live, identity: str) -> dict[str, str]:
    """The session cookies of ``identity`` signed in to the UI (none for those who cannot
    sign in: no user, or a service principal, which has no password)."""
    if identity in ("anonymous", "principal"):
        return {}
    from django.test import Client

    client = Client()
    client.force_login(live.users[identity])
    return {name: morsel.value for name, morsel in client.cookies.items()}


def _re_enable_spare() -> None:
    from endpoints.models import ServingEndpoint

    ServingEndpoint.objects.filter(registered_model_name=SPARE).update(enabled=True)


CASES = [
    pytest.param(action, identity, expected[i], id=f"{action}-{identity}")
    for action, expected in MATRIX.items()
    for i, identity in enumerate(IDENTITIES)
]


@pytest.mark.parametrize(("action", "identity", "expected"), CASES)
def test_authorization_matrix_matches_the_documented_table(
    live, django_db_blocker, action, identity, expected
):
    with django_db_blocker.unblock():
        response = call(live, action, identity)
    status = 200 if expected == NO_ROWS else expected
    assert response.status_code == status, (action, identity, response.text)
    if status >= 400 and action not in UI_ACTIONS:
        body = response.json()
        assert set(body) == {"error_code", "message"}
    if action == "read_captured_requests" and status == 200:
        assert ("rows" in response.json()) == (expected != NO_ROWS), (identity, response.text)
    if action == "download_captured_requests" and status == 302:
        assert response.headers["Location"].startswith("/login/")
    if action.startswith("query") and expected == 200:
        assert response.json() == {"predictions": [0]}


def test_list_shows_only_endpoints_the_caller_may_view(live):
    url = live.base + "/api/2.0/preview/mlflow/endpoints-v2/list"
    for identity in ("viewer", "querier", "manager", "admin", "principal"):
        listed = requests.get(url, headers=live.headers(identity)).json()
        names = {e["registered_model_name"] for e in listed["endpoints"]}
        assert {live.model, SPARE} <= names, identity
    hidden = requests.get(url, headers=live.headers("outsider"))
    assert hidden.status_code == 200
    names = {e["registered_model_name"] for e in hidden.json()["endpoints"]}
    assert live.model not in names
    assert SPARE not in names


def test_another_users_endpoint_is_indistinguishable_from_a_missing_one(live):
    """The outsider gets the same answers for a hidden endpoint as for one that does not
    exist: names of other users' endpoints do not leak."""
    api = live.base + "/api/2.0/preview/mlflow/endpoints-v2/"
    headers = live.headers("outsider")
    for call_name in ("get-status", "list-versions", "list-version-aliases", "get-event-history"):
        hidden = requests.get(
            api + call_name, params={"registered_model_name": live.model}, headers=headers
        )
        missing = requests.get(
            api + call_name, params={"registered_model_name": "nope-xyz"}, headers=headers
        )
        assert hidden.status_code == missing.status_code == 404, call_name
        assert hidden.json()["error_code"] == missing.json()["error_code"]
    scored_hidden = requests.post(live.url(), json=iris.SPLIT, headers=headers)
    scored_missing = requests.post(
        f"{live.base}/model-endpoint/nope-xyz/Production/invocations",
        json=iris.SPLIT,
        headers=headers,
    )
    assert scored_hidden.status_code == scored_missing.status_code == 404


def test_permission_levels_are_ordered_view_query_manage(db):
    """The matrix relies on each level including the ones below it."""
    from endpoints.models import PERMISSION_RANK

    assert PERMISSION_RANK["CAN_VIEW"] < PERMISSION_RANK["CAN_QUERY"]
    assert PERMISSION_RANK["CAN_QUERY"] < PERMISSION_RANK["CAN_MANAGE"]
