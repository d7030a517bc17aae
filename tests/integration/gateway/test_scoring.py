"""The scoring gateway's front door (uvicorn, as `make run` starts it) in front of real replicas.

Replicas are started once per module (the runtime's own launcher); the rows the gateway
routes by (endpoint, versions, stage aliases, Running replicas) are written per test, as
the reconcile loop would. Two extra gateways run with small limits to show 429 and 504.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from django.conf import settings

from endpoints import registry, services
from endpoints.dev.devstack import free_port
from endpoints.kv import bump_generation
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    ServiceState,
    ServingEndpoint,
)
from endpoints.runtime import ReplicaSpec, get_runtime
from endpoints.telemetry import load_reports, metrics
from tests.support import iris
from tests.support.rows import add_replica, add_version
from tests.support.stack import serve_product, wait_for
from tests.support.ui_sender import UiClient

# The rows are written by hand here: the reconcile loop must not correct them meanwhile.
pytestmark = [pytest.mark.any_database, pytest.mark.usefixtures("reconcile_paused")]

Address = tuple[str, int]

# The documented scoring request examples, verbatim.
DATAFRAME_SPLIT = {
    "dataframe_split": {
        "index": [0, 1],
        "columns": iris.COLUMNS,
        "data": [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2]],
    }
}
DATAFRAME_RECORDS = {
    "dataframe_records": [
        {
            "sepal length (cm)": 5.1,
            "sepal width (cm)": 3.5,
            "petal length (cm)": 1.4,
            "petal width (cm)": 0.2,
        },
        {
            "sepal length (cm)": 4.9,
            "sepal width (cm)": 3.0,
            "petal length (cm)": 1.4,
            "petal width (cm)": 0.2,
        },
    ]
}
INPUTS_LIST = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
INSTANCES_ROWS = {"instances": [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2]]}
INSTANCES_TENSORS = {
    "instances": [
        {"t1": "a", "t2": [1, 2, 3, 4, 5], "t3": [[1, 2], [3, 4], [5, 6]]},
        {"t1": "b", "t2": [6, 7, 8, 9, 10], "t3": [[7, 8], [9, 10], [11, 12]]},
    ]
}
INPUTS_TENSORS = {
    "inputs": {
        "t1": ["a", "b"],
        "t2": [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]],
        "t3": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]],
    }
}


# The documented Python scoring client, unchanged.
def create_tf_serving_json(data):
    return {
        "inputs": {name: data[name].tolist() for name in data.keys()}  # noqa: SIM118
        if isinstance(data, dict)
        else data.tolist()
    }


def score_model(model_uri, token, data):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data_json = (
        json.dumps({"dataframe_records": data.to_dict(orient="records")})
        if isinstance(data, pd.DataFrame)
        else create_tf_serving_json(data)
    )
    response = requests.request(method="POST", headers=headers, url=model_uri, json=data_json)
    if response.status_code != 200:
        raise Exception(f"Request failed with status {response.status_code}, {response.text}")
    return response.json()


# --- replicas ------------------------------------------------------------------------------------


def _gate_model():
    """A pyfunc model that notes its arrival in a directory, then waits for a gate file
    (at most a minute): tests hold requests inside a real replica without sleeping."""
    import mlflow

    class Gate(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import os
            import time
            import uuid

            import numpy as np

            def first(key):
                return str(np.asarray(model_input[key]).reshape(-1)[0])

            gate, arrived = first("gate"), first("arrived")
            open(os.path.join(arrived, uuid.uuid4().hex), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.02)
            return {"released": [os.path.exists(gate)]}

    return Gate()


class Replicas:
    """Replica processes started through the runtime, stopped at the end of the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = get_runtime()
        self.started: dict[str, tuple[int, Address]] = {}

    def start(self, replica_id: str, model_dir: Path) -> Address:
        port = free_port()
        spec = ReplicaSpec(
            replica_id=f"gw-{replica_id}-{uuid.uuid4().hex[:6]}",
            model_path=str(model_dir),
            host="127.0.0.1",
            port=port,
            log_path=str(self.root / f"{replica_id}.log"),
            python=sys.executable,
            # The gate model talks to the test through files in the test's temporary
            # directory, which a sandboxed model cannot see: a trusted test model.
            sandbox="off" if replica_id == "gate" else "",
        )
        pid = self.runtime.start(spec)
        self.started[replica_id] = (pid, spec.replica_id)
        return ("127.0.0.1", port)

    def wait(self, *addresses: Address) -> None:
        for host, port in addresses:
            wait_for(
                lambda h=host, p=port: self.runtime.probe(h, p),
                timeout=120,
                what=f"replica on port {port}",
            )

    def kill(self, replica_id: str) -> None:
        pid, rid = self.started.pop(replica_id)
        self.runtime.stop(pid, rid, grace_seconds=0)

    def stop_all(self) -> None:
        for pid, rid in self.started.values():
            self.runtime.stop(pid, rid, grace_seconds=2)


@pytest.fixture(scope="module")
def replica_set(demo_registry, tmp_path_factory) -> Iterator[tuple[Replicas, dict]]:
    import mlflow

    root = tmp_path_factory.mktemp("gateway-replicas")
    models = {
        name: registry.download_model(name, "1", root / name)
        for name in ("iris-classifier", "iris-tensor", "tensor-echo")
    }
    models["gate"] = root / "gate"
    mlflow.pyfunc.save_model(
        str(models["gate"]), python_model=_gate_model(), pip_requirements=["mlflow"]
    )
    replicas = Replicas(root)
    addresses = {name: replicas.start(name, path) for name, path in models.items()}
    addresses["models"] = models
    try:
        replicas.wait(*(a for k, a in addresses.items() if k != "models"))
        yield replicas, addresses
    finally:
        replicas.stop_all()


@pytest.fixture(scope="module")
def queue_gateway(django_db_setup, redis_server, stack_log_dir) -> Iterator[str]:
    """One process, no queue beyond the replica's concurrency of 4: the 5th request waits."""
    yield from serve_product(
        "gateway-queue", stack_log_dir, workers=1, env={"SERVING_QUEUE_PER_REPLICA": "0"}
    )


@pytest.fixture(scope="module")
def timeout_gateway(django_db_setup, redis_server, stack_log_dir) -> Iterator[str]:
    yield from serve_product(
        "gateway-timeout", stack_log_dir, workers=1, env={"SERVING_REQUEST_TIMEOUT_SECONDS": "2"}
    )


# --- routing rows ----------------------------------------------------------------------------


@dataclass
class Served:
    base: str
    token: str
    replicas: Replicas
    addresses: dict
    versions: dict[str, EndpointVersion]

    def url(self, name: str, selector: str, prefix: str = "model-endpoint") -> str:
        return f"{self.base}/{prefix}/{name}/{selector}/invocations"

    def post(self, name: str, selector: str, payload, *, token=None, base=None, **kwargs):
        headers = {"Authorization": f"Bearer {token or self.token}", **kwargs.pop("headers", {})}
        url = (base or self.base) + f"/model-endpoint/{name}/{selector}/invocations"
        return requests.post(url, json=payload, headers=headers, timeout=60, **kwargs)

    def direct(self, name: str, payload) -> requests.Response:
        host, port = self.addresses[name]
        return requests.post(f"http://{host}:{port}/invocations", json=payload, timeout=60)


def serve(owner, name: str, stage: str, addresses: list[Address], *, version: str = "1"):
    """The rows of a READY version answering ``stage``, as the reconcile loop writes them."""
    endpoint, _ = ServingEndpoint.objects.get_or_create(
        registered_model_name=name, defaults={"creator": owner, "state": "READY"}
    )
    return add_version(endpoint, version, stage, replicas=addresses)


@pytest.fixture
def served(transactional_db, replica_set, web_server, owner, make_token) -> Served:
    replicas, addresses = replica_set
    versions = {
        name: serve(owner, name, "Production", [addresses[name]])
        for name in ("iris-classifier", "iris-tensor", "tensor-echo", "gate")
    }
    bump_generation()
    return Served(web_server, make_token(owner), replicas, addresses, versions)


def assert_error(response: requests.Response, status: int, error_code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error_code"] == error_code, body
    assert body["message"]
    return body


# --- the four formats and CSV ------------------------------------------------------------------


def test_spec_example_two_rows_score_on_the_stage_url(served):
    response = served.post("iris-classifier", "Production", DATAFRAME_SPLIT)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [0, 0]}


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        ("iris-classifier", DATAFRAME_SPLIT),
        ("iris-classifier", DATAFRAME_RECORDS),
        ("iris-tensor", INPUTS_LIST),
        ("iris-tensor", INSTANCES_ROWS),
        ("tensor-echo", INSTANCES_TENSORS),
        ("tensor-echo", INPUTS_TENSORS),
    ],
    ids=["split", "records", "inputs-list", "instances-rows", "instances-t1t2t3", "inputs-t1t2t3"],
)
def test_each_input_format_answers_what_mlflow_answers(served, model, payload):
    through = served.post(model, "Production", payload)
    direct = served.direct(model, payload)
    assert through.status_code == direct.status_code == 200, through.text
    assert through.json() == direct.json()
    assert "predictions" in through.json()


def test_tensor_echo_sees_the_tensor_shapes(served):
    answer = served.post("tensor-echo", "Production", INPUTS_TENSORS).json()
    assert answer == {"predictions": {"t1": [2], "t2": [3, 5], "t3": [2, 3, 2]}}


def test_csv_passes_through(served):
    csv = ",".join(iris.COLUMNS) + "\n5.1,3.5,1.4,0.2\n4.9,3.0,1.4,0.2\n"
    response = requests.post(
        served.url("iris-classifier", "Production"),
        data=csv,
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "text/csv"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [0, 0]}


def test_both_prefixes_take_a_stage_or_a_version(served):
    for prefix in ("model-endpoint", "model"):
        for selector in ("Production", "production", "1"):
            response = requests.post(
                served.url("iris-classifier", selector, prefix),
                json=DATAFRAME_SPLIT,
                headers={"Authorization": f"Bearer {served.token}"},
                timeout=30,
            )
            assert response.json() == {"predictions": [0, 0]}, (prefix, selector)


def test_missing_content_type_is_taken_as_json(served):
    response = requests.post(
        served.url("iris-classifier", "Production"),
        data=json.dumps(DATAFRAME_SPLIT),
        headers={"Authorization": f"Bearer {served.token}"},
        timeout=30,
    )
    assert "Content-Type" not in response.request.headers
    assert response.json() == {"predictions": [0, 0]}


# --- the documented Python client -------------------------------------------------------------


def test_documented_python_client_scores_a_dataframe(served):
    frame = pd.DataFrame(DATAFRAME_RECORDS["dataframe_records"])
    url = served.url("iris-classifier", "Production", "model")
    assert score_model(url, served.token, frame) == {"predictions": [0, 0]}


def test_documented_python_client_scores_tensors(served):
    rows = np.array([[5.1, 3.5, 1.4, 0.2]])
    assert score_model(served.url("iris-tensor", "Production"), served.token, rows) == (
        served.direct("iris-tensor", INPUTS_LIST).json()
    )
    tensors = {
        "t1": np.array(["a", "b"]),
        "t2": np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]),
        "t3": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]]),
    }
    answer = score_model(served.url("tensor-echo", "Production"), served.token, tensors)
    assert answer == {"predictions": {"t1": [2], "t2": [2, 5], "t3": [2, 3, 2]}}


# --- auth ------------------------------------------------------------------------------------


def test_curl_style_basic_auth_with_user_token(served):
    response = requests.post(
        served.url("iris-classifier", "Production"),
        json=DATAFRAME_SPLIT,
        auth=("token", served.token),
        timeout=30,
    )
    assert response.json() == {"predictions": [0, 0]}


def test_service_principal_token_with_query_permission(served, owner, admin_user, make_token):
    principal = services.service_principal_create(username="ci-bot", by=admin_user)
    endpoint = served.versions["iris-classifier"].endpoint
    services.permission_set(endpoint=endpoint, user=principal.user, level="CAN_QUERY", by=owner)
    response = served.post(
        "iris-classifier", "Production", DATAFRAME_SPLIT, token=make_token(principal.user)
    )
    assert response.json() == {"predictions": [0, 0]}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sui_not-a-token"}, {"Authorization": "Token abc"}],
    ids=["none", "unknown", "malformed"],
)
def test_missing_or_invalid_token_is_401(served, headers):
    response = requests.post(
        served.url("iris-classifier", "Production"),
        json=DATAFRAME_SPLIT,
        headers=headers,
        timeout=30,
    )
    assert_error(response, 401, "UNAUTHENTICATED")


def test_a_revoked_token_is_refused_right_away(served, member, owner, make_token):
    token, plaintext = services.token_create(user=owner, name="short-lived")
    assert served.post("iris-classifier", "1", DATAFRAME_SPLIT, token=plaintext).ok
    services.token_revoke(token_id=token.pk, user=owner)
    response = served.post("iris-classifier", "1", DATAFRAME_SPLIT, token=plaintext)
    assert_error(response, 401, "UNAUTHENTICATED")


def test_querying_needs_can_query(served, owner, member, outsider, make_token):
    endpoint = served.versions["iris-classifier"].endpoint
    services.permission_set(endpoint=endpoint, user=member, level="CAN_VIEW", by=owner)
    response = served.post(
        "iris-classifier", "Production", DATAFRAME_SPLIT, token=make_token(member)
    )
    assert_error(response, 403, "PERMISSION_DENIED")
    # Without even CAN_VIEW the endpoint is reported as missing, as the API does.
    response = served.post(
        "iris-classifier", "Production", DATAFRAME_SPLIT, token=make_token(outsider)
    )
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    response = served.post(
        "iris-classifier", "Production", DATAFRAME_SPLIT, token=make_token(member)
    )
    assert response.json() == {"predictions": [0, 0]}


# --- the Serving tab's Send Request: the session instead of a token ----------------------------


def test_the_serving_tab_sends_with_the_session_and_its_csrf_token(served, owner):
    ui = UiClient(served.base, "alice", "pw-alice-123")
    form = ui.form("iris-classifier", "1")
    assert form.score_path == "/model/iris-classifier/1/invocations"
    answer = ui.send(form, DATAFRAME_SPLIT)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [0, 0]}
    assert answer.headers["X-Serving-Version"] == "1"


def test_a_session_needs_the_csrf_token_the_own_origin_and_a_live_login(served, owner):
    ui = UiClient(served.base, "alice", "pw-alice-123")
    form = ui.form("iris-classifier", "1")
    assert_error(ui.send(form, DATAFRAME_SPLIT, **{"X-CSRFToken": None}), 403, "PERMISSION_DENIED")
    assert_error(
        ui.send(form, DATAFRAME_SPLIT, **{"X-CSRFToken": "x" * 64}), 403, "PERMISSION_DENIED"
    )
    assert_error(
        ui.send(form, DATAFRAME_SPLIT, Origin="http://elsewhere.example"), 403, "PERMISSION_DENIED"
    )
    requests.post(
        served.base + "/logout/",
        data={"csrfmiddlewaretoken": form.csrf_token},
        cookies=ui.cookies,
        timeout=30,
    )
    assert_error(ui.send(form, DATAFRAME_SPLIT), 401, "UNAUTHENTICATED")


def test_the_serving_tab_sends_only_with_can_query(served, owner, member):
    endpoint = served.versions["iris-classifier"].endpoint
    services.permission_set(endpoint=endpoint, user=member, level="CAN_VIEW", by=owner)
    ui = UiClient(served.base, "bob", "pw-bob-123")
    assert_error(
        ui.send(ui.form("iris-classifier", "1"), DATAFRAME_SPLIT), 403, "PERMISSION_DENIED"
    )


def test_caller_credentials_never_reach_the_model_server(served, owner):
    seen: list[dict[str, str]] = []

    class Probe(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b'{"predictions": [1]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    probe = ThreadingHTTPServer(("127.0.0.1", 0), Probe)
    threading.Thread(target=probe.serve_forever, daemon=True).start()
    try:
        serve(owner, "header-probe", "Production", [probe.server_address])
        bump_generation()
        response = served.post(
            "header-probe",
            "Production",
            {"inputs": [1]},
            headers={"Cookie": "sessionid=secret", "X-Forwarded-For": "10.0.0.1"},
        )
    finally:
        probe.shutdown()
    assert response.json() == {"predictions": [1]}
    (headers,) = seen
    assert served.token not in json.dumps(headers)
    assert not {"authorization", "cookie", "x-forwarded-for"} & headers.keys()
    assert headers["content-type"] == "application/json"


# --- errors ------------------------------------------------------------------------------------


def test_malformed_json_is_400_with_the_model_servers_reason(served):
    response = requests.post(
        served.url("iris-classifier", "Production"),
        data='{"dataframe_split": ',
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert_error(response, 400, "BAD_REQUEST")
    assert "valid JSON" in response.json()["message"]


@pytest.mark.parametrize(
    "payload",
    [{"foo": [1]}, {"inputs": [[1, 2, 3, 4]], "instances": [[1, 2, 3, 4]]}],
    ids=["no-key", "two-keys"],
)
def test_none_or_several_format_keys_are_400(served, payload):
    body = assert_error(served.post("iris-classifier", "Production", payload), 400, "BAD_REQUEST")
    assert "exactly one of the input fields" in body["message"]
    assert body == served.direct("iris-classifier", payload).json()


def test_columns_not_matching_the_signature_are_400(served):
    payload = {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}
    body = assert_error(
        served.post("iris-classifier", "Production", payload), 400, "INVALID_PARAMETER_VALUE"
    )
    assert "Failed to enforce schema" in body["message"]


def test_tensor_input_for_a_column_signature_is_what_mlflow_says(served):
    through = served.post("iris-classifier", "Production", INPUTS_LIST)
    direct = served.direct("iris-classifier", INPUTS_LIST)
    assert through.status_code == direct.status_code == 400
    assert through.json()["error_code"] == direct.json()["error_code"]


def test_an_unsupported_content_type_gets_the_error_shape(served):
    response = requests.post(
        served.url("iris-classifier", "Production"),
        data="<rows/>",
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/xml"},
        timeout=30,
    )
    assert_error(response, 415, "BAD_REQUEST")


@pytest.mark.parametrize(
    ("name", "selector"),
    [("no-such-model", "Production"), ("iris-classifier", "7"), ("iris-classifier", "Staging")],
)
def test_unknown_model_stage_or_version_is_404(served, name, selector):
    assert_error(served.post(name, selector, DATAFRAME_SPLIT), 404, "RESOURCE_DOES_NOT_EXIST")


def test_disabled_serving_is_404(served, owner):
    services.endpoint_disable(name="iris-tensor", user=owner)
    assert_error(
        served.post("iris-tensor", "Production", INPUTS_LIST), 404, "RESOURCE_DOES_NOT_EXIST"
    )


def test_a_version_not_ready_yet_is_503_with_retry_after(served):
    endpoint = served.versions["iris-classifier"].endpoint
    EndpointVersion.objects.create(
        endpoint=endpoint, version="2", registry_stage="Staging", service_state=ServiceState.PENDING
    )
    bump_generation()
    for selector in ("2", "Staging"):
        response = served.post("iris-classifier", selector, DATAFRAME_SPLIT)
        assert_error(response, 503, "TEMPORARILY_UNAVAILABLE")
        assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    "path",
    [
        "/model/iris-classifier/../../admin/invocations",
        "/model/%2e%2e/%2e%2e/invocations",
        "/model/iris-classifier/%2e%2e%2f1/invocations",
        "/model/127.0.0.1:6379/1/invocations",
        "/model/@127.0.0.1:6379/1/invocations",
        "/model/http:%2f%2f127.0.0.1:6379%2f/1/invocations",
        "/model/iris-classifier%0d%0aHost:%20evil/1/invocations",
        "/model/iris-classifier/1%0d%0a/invocations",
        "/model-endpoint/iris-classifier/Production/invocations/../../../api",
    ],
)
def test_path_tricks_never_reach_anything_but_a_known_replica(served, path):
    host, port = served.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST",
        path,
        body=json.dumps(DATAFRAME_SPLIT),
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 404, body
    assert body["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_absolute_form_request_target_is_routed_by_its_path_only(served):
    host, port = served.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST",
        "http://127.0.0.1:6379/model/iris-classifier/1/invocations",
        body=json.dumps(DATAFRAME_SPLIT),
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"predictions": [0, 0]})
    conn.close()


def test_scoring_urls_accept_post_only(served):
    response = requests.get(
        served.url("iris-classifier", "Production"),
        headers={"Authorization": f"Bearer {served.token}"},
        timeout=30,
    )
    assert_error(response, 405, "BAD_REQUEST")
    assert response.headers["Allow"] == "POST"


def test_a_body_over_16_mb_is_413(served):
    limit = settings.SERVING["MAX_PAYLOAD_BYTES"]
    response = requests.post(
        served.url("iris-classifier", "Production"),
        data=b" " * (limit + 1),
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert_error(response, 413, "REQUEST_ENTITY_TOO_LARGE")


def test_a_chunked_body_over_16_mb_is_413(served):
    def chunks():
        for _ in range(17):
            yield b" " * (1024 * 1024)

    response = requests.post(
        served.url("iris-classifier", "Production"),
        data=chunks(),
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert_error(response, 413, "REQUEST_ENTITY_TOO_LARGE")


# --- held requests: queue limit, timeout, cold start, failover -----------------------------------


class GateRequests:
    def __init__(self, tmp_path: Path) -> None:
        self.gate = tmp_path / "open"
        self.arrived = tmp_path / "arrived"
        self.arrived.mkdir()

    def payload(self, gate: Path | None = None) -> dict:
        return {"inputs": {"gate": [str(gate or self.gate)], "arrived": [str(self.arrived)]}}

    def arrivals(self) -> int:
        return len(list(self.arrived.iterdir()))

    def open(self) -> None:
        self.gate.touch()


def _in_thread(fn, results: list, index: int) -> threading.Thread:
    def run() -> None:
        results[index] = fn()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_more_requests_than_the_version_can_queue_get_429(served, queue_gateway, tmp_path):
    gates = GateRequests(tmp_path)
    results: list = [None] * 4
    threads = [
        _in_thread(
            lambda: served.post("gate", "Production", gates.payload(), base=queue_gateway),
            results,
            i,
        )
        for i in range(4)
    ]
    try:
        wait_for(lambda: gates.arrivals() == 4, timeout=60, what="four requests in the model")
        refused = served.post("gate", "Production", gates.payload(), base=queue_gateway)
        assert_error(refused, 429, "REQUEST_LIMIT_EXCEEDED")
        assert refused.headers["Retry-After"] == "1"
    finally:
        gates.open()
        for thread in threads:
            thread.join()
    assert [r.status_code for r in results] == [200] * 4
    assert results[0].json() == {"predictions": {"released": [True]}}


def test_a_model_past_the_timeout_is_504_and_the_replica_answers_again(
    served, timeout_gateway, tmp_path
):
    gates = GateRequests(tmp_path)
    try:
        slow = served.post("gate", "Production", gates.payload(), base=timeout_gateway)
        assert_error(slow, 504, "DEADLINE_EXCEEDED")
        assert gates.arrivals() == 1
        opened = tmp_path / "already-open"
        opened.touch()
        quick = served.post("gate", "Production", gates.payload(opened), base=timeout_gateway)
        assert quick.json() == {"predictions": {"released": [True]}}
    finally:
        gates.open()


def test_a_stage_scaled_to_zero_wakes_and_the_request_waits_for_it(served, owner):
    iris = served.versions["iris-classifier"]
    ComputeConfig.objects.create(
        endpoint=iris.endpoint, stage="Staging", scale_to_zero_enabled=True
    )
    cold = add_version(iris.endpoint, "2", "Staging")
    bump_generation()
    results: list = [None]
    thread = _in_thread(
        lambda: served.post("iris-classifier", "Staging", DATAFRAME_SPLIT), results, 0
    )
    wait_for(lambda: load_reports.wake_requested(cold.pk), timeout=30, what="a wake-up request")
    assert thread.is_alive()  # held, not refused
    # What the reconcile loop does once the replica is up.
    add_replica(cold, served.addresses["iris-classifier"])
    bump_generation()
    thread.join(timeout=60)
    assert results[0].status_code == 200, results[0].text
    assert results[0].json() == {"predictions": [0, 0]}


def test_a_killed_replica_is_retried_on_another(served):
    iris = served.versions["iris-classifier"]
    second = served.replicas.start("iris-second", served.addresses["models"]["iris-classifier"])
    served.replicas.wait(second)
    add_replica(iris, second)
    bump_generation()
    # Both replicas now hold keep-alive connections from the gateway.
    for _ in range(10):
        assert served.post("iris-classifier", "Production", DATAFRAME_SPLIT).status_code == 200
    served.replicas.kill("iris-second")
    statuses = [
        served.post("iris-classifier", "Production", DATAFRAME_SPLIT).status_code for _ in range(20)
    ]
    assert statuses == [200] * 20


# --- load reports and metrics ------------------------------------------------------------------


def test_requests_are_reported_for_the_autoscaler_and_counted_in_metrics(served):
    version = served.versions["tensor-echo"]
    for _ in range(3):
        assert served.post("tensor-echo", "Production", INPUTS_TENSORS).ok
    assert served.post("tensor-echo", "Production", {"foo": 1}).status_code == 400
    # Refused requests are not counted.
    served.post("tensor-echo", "Production", INPUTS_TENSORS, token="sui_wrong")

    def counted():
        now_ms = int(time.time() * 1000)
        points = metrics.series(version.pk, now_ms - 120_000, now_ms + 10_000)
        total = sum(p["requests"] for p in points)
        return points if total >= 4 else None

    points = wait_for(counted, timeout=15, what="flushed metrics")
    assert sum(p["requests"] for p in points) == 4
    assert sum(p["errors"] for p in points) == 1
    assert load_reports.current(version.pk).last_request_at > 0
