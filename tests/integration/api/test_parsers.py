"""The API's body limit on the requests it parses, JSON labelled as JSON or as a form (what
``curl -d`` sends); reading a body without a Content-Length is in
``tests/unit/test_files_and_growth.py``."""

from __future__ import annotations

import pytest

from endpoints.models import ServingEndpoint
from tests.support.api import assert_error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

V2 = "/api/2.0/preview/mlflow/endpoints-v2/"


def test_api_refuses_oversized_json(as_user, owner, settings):
    ServingEndpoint.objects.create(registered_model_name="ElasticNet", creator=owner)
    settings.API_MAX_BODY_BYTES = 2048
    api = as_user(owner)
    entries = [{"user_name": f"user-{i}", "permission_level": "CAN_VIEW"} for i in range(200)]
    body = {"registered_model_name": "ElasticNet", "access_control_list": entries}
    response = api.post(V2 + "set-permissions", body, format="json")
    message = assert_error(response, 413, "REQUEST_ENTITY_TOO_LARGE")["message"]
    assert "2048" in message and "API_MAX_BODY_BYTES" in message
    # Also when the JSON is labelled as a form (curl -d).
    response = api.post(
        V2 + "disable",
        data=b'{"registered_model_name": "' + b"x" * 4096 + b'"}',
        content_type="application/x-www-form-urlencoded",
    )
    assert_error(response, 413, "REQUEST_ENTITY_TOO_LARGE")
    # A body within the limit is parsed as before.
    small = {"registered_model_name": "ElasticNet", "access_control_list": []}
    assert api.post(V2 + "set-permissions", small, format="json").status_code == 200
