"""The Serving tab: enable, status and its poll, versions, disable, compute settings, the
request sender (example and send), logs, metrics and events.

Rows of observed state (versions, replicas, events) are written directly, as the reconcile
loop would; the registry is this run's real MLflow registry with a model of each test's own.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from endpoints import services
from endpoints.gateway import scoring as gateway_app
from endpoints.kv import bump_generation
from endpoints.models import (
    ComputeConfig,
    Event,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
)
from endpoints.services import traffic
from tests.support.rows import add_replica, add_version

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]

HTMX = {"HTTP_HX_REQUEST": "true"}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def endpoint(model_name, owner) -> ServingEndpoint:
    return services.endpoint_enable(name=model_name, user=owner)


def ready(endpoint: ServingEndpoint) -> ServingEndpoint:
    endpoint.state = "READY"
    endpoint.state_message = "Serving is ready."
    endpoint.save()
    return endpoint


def serving_url(name: str) -> str:
    return f"/models/{name}/serving/"


# --- the page while serving is off --------------------------------------------------------------


def test_serving_off_shows_the_enable_button(owner, model_name):
    response = logged_in(owner).get(serving_url(model_name))
    assert response.status_code == 200
    assert b"Enable Serverless Real-Time Inference" in response.content


def test_serving_off_without_create_permission_explains_why(member, model_name):
    response = logged_in(member).get(serving_url(model_name))
    assert response.status_code == 200
    assert b"Enable Serverless Real-Time Inference</button>" not in response.content
    assert b"permission to create endpoints" in response.content


def test_serving_of_unknown_model_is_404(owner, redis_server):
    (Path(settings.VAR_DIR) / "mlflow").mkdir(parents=True, exist_ok=True)
    assert logged_in(owner).get(serving_url("no-such-model")).status_code == 404


def test_serving_requires_login(model_name):
    response = Client().get(serving_url(model_name))
    assert response.status_code == 302
    assert "/login/" in response["Location"]


POLL = "hx-trigger=\"every 10s [document.visibilityState === 'visible']"


# --- enable -------------------------------------------------------------------------------------


def test_enable_turns_serving_on_and_shows_pending(owner, model_name):
    client = logged_in(owner)
    response = client.post(serving_url(model_name) + "enable/")
    assert response.status_code == 302
    assert ServingEndpoint.objects.get(registered_model_name=model_name).enabled
    page = client.get(response["Location"])
    assert b'data-testid="endpoint-status"' in page.content
    assert b"Pending" in page.content
    assert POLL in page.content.decode()
    assert b"Disable Serving" in page.content


def test_enable_without_create_permission_is_403_with_the_message(member, model_name):
    response = logged_in(member).post(serving_url(model_name) + "enable/")
    assert response.status_code == 403
    assert b"needs the permission to create endpoints" in response.content
    assert not ServingEndpoint.objects.exists()


def test_enable_twice_shows_the_conflict(owner, endpoint, model_name):
    response = logged_in(owner).post(serving_url(model_name) + "enable/")
    assert response.status_code == 409
    assert b"already enabled" in response.content


def test_enable_is_post_only(owner, model_name):
    assert logged_in(owner).get(serving_url(model_name) + "enable/").status_code == 405


# --- status, versions, URLs and the poll --------------------------------------------------------


def test_versions_are_listed_with_stage_and_status(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    add_version(endpoint, "2", "Staging", state=ServiceState.PENDING)
    response = logged_in(owner).get(serving_url(model_name))
    html = response.content.decode()
    assert 'data-testid="version-tab-1"' in html
    assert 'data-testid="version-tab-2"' in html
    sidebar = html[html.index('id="sidebar"') : html.index("</aside>")]
    assert "Production" in sidebar and "Staging" in sidebar
    assert "Ready" in sidebar and "Pending" in sidebar


def test_model_urls_are_absolute_for_stages_and_versions(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    assert f"http://testserver/model-endpoint/{model_name}/Production/invocations" in html
    assert f"http://testserver/model/{model_name}/1/invocations" in html


def test_the_replica_list_shows_each_replicas_gpus_where_a_replica_has_some(
    owner, endpoint, model_name
):
    version = add_version(endpoint, "1", "Production", replicas=[("127.0.0.1", 20001)])

    def rows() -> dict[str, str]:
        html = logged_in(owner).get(serving_url(model_name)).content.decode()
        table = html[html.index('class="table compact replicas"') :]
        table = table[: table.index("</table>")]
        head, body = table.split("<tbody>")
        return {"head": head} | {r.split("</code>")[0]: r for r in body.split("<code>")[1:]}

    [cpu] = version.replicas.all()
    before = rows()
    assert "<th>GPUs</th>" not in before["head"]
    assert before[cpu.replica_id].count('<td class="small">—</td>') == 1  # its node
    gpu = add_replica(version, ("127.0.0.1", 20002), gpu_devices="0,1")
    after = rows()
    assert "<th>GPUs</th>" in after["head"]
    assert '<td class="small">0,1</td>' in after[gpu.replica_id]
    assert after[cpu.replica_id].count('<td class="small">—</td>') == 2  # its node, its GPUs


def test_updating_version_is_labelled_updating(owner, endpoint, model_name):
    v = add_version(endpoint, "1", "Production")
    v.config_update_state = ServiceState.PENDING
    v.save()
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    assert "Updating" in html


def test_status_poll_renders_the_partial_and_keeps_polling_while_pending(
    owner, endpoint, model_name
):
    add_version(endpoint, "1", "Production", state=ServiceState.PENDING)
    response = logged_in(owner).get(
        serving_url(model_name) + "?shown=1", HTTP_HX_TARGET="status", **HTMX
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert 'id="status"' in html and POLL in html
    # The other live regions come along out of band.
    assert 'id="sidebar" class="sidebar" aria-label="Endpoint versions" hx-swap-oob="true"' in html
    assert 'id="call-controls"' in html
    # Nothing being edited is swapped: not the request box, not the request form.
    assert "<textarea" not in html and 'id="call-form"' not in html


def test_status_poll_goes_on_once_settled_and_shows_the_next_change(owner, endpoint, model_name):
    """A settled page keeps polling: a crash or a scale to zero later shows by itself."""
    ready(endpoint)
    v = add_version(endpoint, "1", "Production", replicas=[("127.0.0.1", 20001)])
    client = logged_in(owner)
    poll = serving_url(model_name) + "?shown=1"
    response = client.get(poll, HTTP_HX_TARGET="status", **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert POLL in html and "Ready" in html
    # The replica crashes: the next poll shows it in the version detail, out of band.
    replica = v.replicas.get()
    replica.state = ReplicaState.ERROR
    replica.state_message = "Exited with code -9."
    replica.save()
    v.service_state = ServiceState.PENDING
    v.service_message = "Restarting a replica that exited."
    v.save()
    html = client.get(poll, HTTP_HX_TARGET="status", **HTMX).content.decode()
    detail = html[html.index('id="version-detail"') :]
    assert 'hx-swap-oob="true"' in detail[:200]
    assert "Exited with code -9." in detail and "Restarting a replica that exited." in detail
    assert POLL in html


def test_status_poll_goes_on_while_a_saved_config_waits_for_the_worker(owner, endpoint, model_name):
    ready(endpoint)
    add_version(endpoint, "1", "Production")
    client = logged_in(owner)
    client.post(
        serving_url(model_name) + "compute/", {"stage": "Production", "workload_size": "Large"}
    )
    response = client.get(serving_url(model_name) + "?shown=1", HTTP_HX_TARGET="status", **HTMX)
    assert response.status_code == 200
    assert POLL in response.content.decode()
    html = client.get(serving_url(model_name) + "?tab=compute").content.decode()
    assert "Update queued" in html


def test_status_poll_on_the_compute_tab_refreshes_the_rollout_state(owner, endpoint, model_name):
    v = add_version(endpoint, "2", "Staging")
    v.config_update_state = ServiceState.PENDING
    v.save()
    response = logged_in(owner).get(
        serving_url(model_name) + "?shown=2&tab=compute", HTTP_HX_TARGET="status", **HTMX
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="rollout-staging" data-testid="rollout-staging" hx-swap-oob="true"' in html
    assert "Updating" in html
    assert 'id="call-controls"' not in html
    assert 'name="workload_size"' not in html  # the compute form stays as the user left it


def test_status_poll_reloads_the_page_when_versions_came(owner, endpoint, model_name):
    client = logged_in(owner)
    page = client.get(serving_url(model_name)).content.decode()
    assert "shown=none" in page
    add_version(endpoint, "1", "Production", state=ServiceState.PENDING)
    response = client.get(serving_url(model_name) + "?shown=none", HTTP_HX_TARGET="status", **HTMX)
    assert response.status_code == 200
    assert response["HX-Refresh"] == "true"


def test_serving_of_hidden_endpoint_is_404(outsider, endpoint, model_name):
    assert logged_in(outsider).get(serving_url(model_name)).status_code == 404


def test_viewer_sees_status_but_no_manage_controls(owner, member, endpoint, model_name):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_VIEW", by=owner)
    response = logged_in(member).get(serving_url(model_name))
    assert response.status_code == 200
    assert b"Disable Serving" not in response.content


# --- disable ------------------------------------------------------------------------------------


def test_disable_asks_for_confirmation_and_turns_serving_off(owner, endpoint, model_name):
    client = logged_in(owner)
    page = client.get(serving_url(model_name)).content.decode()
    assert 'data-confirm="Disable serving for' in page
    response = client.post(serving_url(model_name) + "disable/")
    assert response.status_code == 302
    assert not ServingEndpoint.objects.get(pk=endpoint.pk).enabled
    after = client.get(response["Location"]).content
    assert b"Enable Serverless Real-Time Inference" in after
    assert b"Serving is disabled" in after


def test_disable_by_viewer_is_403(owner, member, endpoint, model_name):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    assert logged_in(member).post(serving_url(model_name) + "disable/").status_code == 403
    assert ServingEndpoint.objects.get(pk=endpoint.pk).enabled


def test_disable_by_outsider_is_404(outsider, endpoint, model_name):
    assert logged_in(outsider).post(serving_url(model_name) + "disable/").status_code == 404


# --- compute settings ---------------------------------------------------------------------------


def test_compute_tab_shows_sizes_with_concurrency_and_current_config(owner, endpoint, model_name):
    html = logged_in(owner).get(serving_url(model_name) + "?tab=compute").content.decode()
    assert 'data-testid="compute-staging"' in html and 'data-testid="compute-production"' in html
    assert "8\u201316 concurrent requests" in html  # an en dash between the bounds
    assert "16\u201364 concurrent requests" in html
    assert "Scale to zero" in html


def test_compute_update_saves_a_new_config_and_shows_rollout(owner, endpoint, model_name):
    v = add_version(endpoint, "2", "Staging")
    client = logged_in(owner)
    response = client.post(
        serving_url(model_name) + "compute/",
        {"stage": "Staging", "workload_size": "Medium", "scale_to_zero_enabled": "on"},
    )
    assert response.status_code == 302
    config = endpoint.current_compute_config("Staging")
    assert (config.workload_size, config.scale_to_zero_enabled) == ("Medium", True)
    assert endpoint.current_compute_config("Production").workload_size == "Small"
    # What the reconcile loop does when it starts the rollout.
    v.config_update_state = ServiceState.PENDING
    v.target_config = config
    v.save()
    html = client.get(response["Location"]).content.decode()
    rollout = html[html.index('data-testid="rollout-staging"') :]
    assert "Updating" in rollout[:400]
    assert "Medium" in html


def test_compute_update_saves_batching_and_shows_it(owner, endpoint, model_name):
    client = logged_in(owner)
    html = client.get(serving_url(model_name) + "?tab=compute").content.decode()
    assert "Batch concurrent requests" in html and "independently of the other rows" in html
    response = client.post(
        serving_url(model_name) + "compute/",
        {
            "stage": "Staging",
            "workload_size": "Small",
            "batching_enabled": "on",
            "max_batch_size": "16",
            "max_wait_ms": "0",
        },
    )
    assert response.status_code == 302
    config = endpoint.current_compute_config("Staging")
    assert (config.max_batch_size, config.max_wait_ms) == (16, 0)
    html = client.get(response["Location"]).content.decode()
    staging = html[html.index('data-testid="compute-staging"') :]
    assert "Current: Small, batching up to 16 rows / 0 ms" in staging
    assert 'name="max_wait_ms" min="0" max="100" value="0"' in staging
    # Unticked, the numbers are ignored and batching is off.
    client.post(
        serving_url(model_name) + "compute/",
        {"stage": "Staging", "workload_size": "Small", "max_batch_size": "999"},
    )
    assert not endpoint.current_compute_config("Staging").batching_enabled


def test_compute_update_rejects_batching_out_of_range(owner, endpoint, model_name):
    client = logged_in(owner)
    response = client.post(
        serving_url(model_name) + "compute/",
        {
            "stage": "Staging",
            "workload_size": "Small",
            "batching_enabled": "on",
            "max_batch_size": "8",
            "max_wait_ms": "500",
        },
        follow=True,
    )
    assert "Max wait: Ensure this value is less than or equal to 100." in response.content.decode()
    assert endpoint.current_compute_config("Staging") is None or not (
        endpoint.current_compute_config("Staging").batching_enabled
    )


def test_compute_update_during_a_rollout_shows_the_conflict(owner, endpoint, model_name):
    v = add_version(endpoint, "2", "Staging")
    v.config_update_state = ServiceState.PENDING
    v.save()
    response = logged_in(owner).post(
        serving_url(model_name) + "compute/", {"stage": "Staging", "workload_size": "Large"}
    )
    assert response.status_code == 409
    assert b"still rolling out" in response.content


def test_failed_rollout_can_be_retried(owner, endpoint, model_name):
    v = add_version(endpoint, "2", "Staging")
    v.config_update_state = ServiceState.FAILED
    v.config_update_message = "Replica did not become healthy."
    v.save()
    client = logged_in(owner)
    html = client.get(serving_url(model_name) + "?tab=compute").content.decode()
    assert "Update Failed" in html and "Retry Staging update" in html
    response = client.post(serving_url(model_name) + "compute/restart/", {"stage": "Staging"})
    assert response.status_code == 302
    v.refresh_from_db()
    assert v.config_update_state == ServiceState.RETRY_REQUESTED


def test_compute_update_by_querier_is_403(owner, member, endpoint, model_name):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    response = logged_in(member).post(
        serving_url(model_name) + "compute/", {"stage": "Staging", "workload_size": "Large"}
    )
    assert response.status_code == 403
    assert ComputeConfig.objects.filter(endpoint=endpoint, workload_size="Large").count() == 0


def test_compute_update_by_outsider_is_404(outsider, endpoint, model_name):
    response = logged_in(outsider).post(
        serving_url(model_name) + "compute/", {"stage": "Staging", "workload_size": "Large"}
    )
    assert response.status_code == 404


# --- the request sender -------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    example = {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2.0], [3.0, 4.0]]}}
    (path / "serving_input_example.json").write_text(json.dumps(example))
    return path


def test_send_request_is_disabled_until_the_version_is_ready(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production", state=ServiceState.PENDING)
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    assert 'title="Model version process is not ready"' in html
    controls = html[
        html.index('id="call-controls"') : html.index("</form>", html.index('id="call-controls"'))
    ]
    assert 'class="primary" disabled>Send Request' in controls


def test_send_request_is_enabled_when_ready(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    assert '<button type="submit" class="primary">Send Request</button>' in html


def test_show_example_is_disabled_with_the_reason_without_one(
    owner, endpoint, model_name, tmp_path
):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    add_version(endpoint, "1", "Production", model_path=str(empty))
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    assert 'title="This model version was logged without an input example."' in html


def test_show_example_loads_it_as_records(owner, endpoint, model_name, model_dir):
    add_version(endpoint, "1", "Production", model_path=str(model_dir))
    client = logged_in(owner)
    html = client.get(serving_url(model_name)).content.decode()
    assert ">Show Example</a>" in html
    response = client.get(serving_url(model_name) + "example/?version=1", **HTMX)
    assert response.status_code == 200
    text = response.content.decode()
    assert text.startswith('<textarea id="request-body"')
    body = json.loads(text[text.index(">") + 1 : text.rindex("</textarea>")].replace("&quot;", '"'))
    assert body == {"dataframe_records": [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]}


def test_show_example_without_javascript_prefills_the_box(owner, endpoint, model_name, model_dir):
    add_version(endpoint, "1", "Production", model_path=str(model_dir))
    client = logged_in(owner)
    response = client.get(serving_url(model_name) + "example/?version=1")
    assert response.status_code == 302
    html = client.get(response["Location"]).content.decode()
    assert "dataframe_records" in html


def test_show_example_of_hidden_endpoint_is_404(outsider, endpoint, model_name, model_dir):
    add_version(endpoint, "1", "Production", model_path=str(model_dir))
    response = logged_in(outsider).get(serving_url(model_name) + "example/?version=1")
    assert response.status_code == 404


def test_send_request_posts_to_the_version_scoring_url_with_javascript(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    form = html[html.index('<form id="call-form"') : html.index("</form>", html.index("call-form"))]
    # The page's script posts the box there itself (the front door answers it like any
    # client's request); the form's own action is for browsers without JavaScript.
    assert f'data-score="/model/{model_name}/1/invocations"' in form
    assert f'action="/models/{model_name}/serving/invoke/"' in form
    assert 'name="csrfmiddlewaretoken"' in form
    assert "hx-post" not in form
    assert "/static/serving.js" in html


def test_send_request_without_javascript_renders_the_page_with_the_answer(
    owner, endpoint, model_name
):
    add_version(endpoint, "1", "Production", state=ServiceState.PENDING)
    # The test's transaction never commits, so tell the gateway's cache by hand.
    bump_generation()
    response = logged_in(owner).post(
        serving_url(model_name) + "invoke/", {"version": "1", "body": '{"inputs": [[1, 2]]}'}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" in html
    assert 'data-testid="response"' in html
    assert "Status <strong>503</strong>" in html
    assert "TEMPORARILY_UNAVAILABLE" in html
    assert " ms</p>" in html
    # The request stays in the box.
    assert "{&quot;inputs&quot;: [[1, 2]]}</textarea>" in html


class AnsweringReplica:
    """A loopback model server answering every request with ``{"predictions": [1]}``."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                body = b'{"predictions": [1]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = self.server.server_address
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def answering_replica():
    replica = AnsweringReplica()
    yield replica
    replica.close()


def test_send_request_without_javascript_is_captured_like_any_request(
    owner, endpoint, model_name, answering_replica, monkeypatch
):
    add_version(endpoint, "1", "Production", replicas=[answering_replica.address])
    traffic.inference_table_update(name=model_name, enabled=True, user=owner)
    bump_generation()
    offered = []
    capture = gateway_app.gateway().capture
    monkeypatch.setattr(capture, "offer", lambda rate, **row: offered.append((rate, row)))
    response = logged_in(owner).post(
        serving_url(model_name) + "invoke/", {"version": "1", "body": '{"inputs": [[1, 2]]}'}
    )
    assert "Status <strong>200</strong>" in response.content.decode()
    [(rate, row)] = offered
    assert rate == 1.0
    assert row["endpoint"] == model_name
    assert (row["selector"], row["version"], row["status"]) == ("1", "1", 200)
    assert row["token_id"] == 0  # sent with the session, not a token
    assert row["request"] == b'{"inputs": [[1, 2]]}'
    assert json.loads(row["response"]) == {"predictions": [1]}


def test_send_requests_without_javascript_are_capped_per_process_with_a_429(
    owner, endpoint, model_name, answering_replica
):
    add_version(endpoint, "1", "Production", replicas=[answering_replica.address])
    bump_generation()
    client = logged_in(owner)
    # As many form sends as a process lets wait on its page threads are in flight.
    held = [gateway_app.page_sends.acquire(blocking=False) for _ in range(gateway_app.PAGE_SENDS)]
    try:
        assert all(held)
        html = client.post(
            serving_url(model_name) + "invoke/", {"version": "1", "body": "{}"}
        ).content.decode()
    finally:
        for _ in held:
            gateway_app.page_sends.release()
    assert "Status <strong>429</strong>" in html
    assert "REQUEST_LIMIT_EXCEEDED" in html
    assert "without JavaScript" in html
    html = client.post(
        serving_url(model_name) + "invoke/", {"version": "1", "body": "{}"}
    ).content.decode()
    assert "Status <strong>200</strong>" in html


def test_send_request_without_query_permission_shows_403(owner, member, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    services.permission_set(endpoint=endpoint, user=member, level="CAN_VIEW", by=owner)
    bump_generation()
    response = logged_in(member).post(
        serving_url(model_name) + "invoke/", {"version": "1", "body": "{}"}
    )
    assert "Status <strong>403</strong>" in response.content.decode()


def test_send_request_by_outsider_is_404(outsider, endpoint, model_name):
    response = logged_in(outsider).post(
        serving_url(model_name) + "invoke/", {"version": "1", "body": "{}"}
    )
    assert response.status_code == 404


def test_snippets_show_curl_and_the_python_client_for_the_version_url(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    url = f"http://testserver/model/{model_name}/1/invocations"
    assert (
        "curl -u token:$TOKEN -X POST -H &quot;Content-Type: application/json&quot; "
        f"-d@data.json {url}"
    ) in html
    assert "def score_model(dataset):" in html and f"url = &quot;{url}&quot;" in html


# --- logs, metrics and events -------------------------------------------------------------------


def test_logs_tab_merges_replicas_and_has_a_tab_per_replica(owner, endpoint, model_name, tmp_path):
    v = add_version(endpoint, "1", "Production")
    for rid, state in (("r-aaa", ReplicaState.RUNNING), ("r-bbb", ReplicaState.TERMINATED)):
        log = tmp_path / f"{rid}.log"
        log.write_text(f"hello from {rid}\n")
        Replica.objects.create(version=v, replica_id=rid, port=1, state=state, log_path=str(log))
    client = logged_in(owner)
    html = client.get(serving_url(model_name) + "?tab=logs").content.decode()
    assert "[r-aaa] hello from r-aaa" in html and "[r-bbb] hello from r-bbb" in html
    assert "All Replicas" in html and "Terminated" in html
    one = client.get(serving_url(model_name) + "?tab=logs&replica=r-bbb").content.decode()
    assert "hello from r-bbb" in one and "hello from r-aaa" not in one


def test_logs_tab_is_for_managers_only(owner, member, endpoint, model_name, tmp_path):
    v = add_version(endpoint, "1", "Production")
    log = tmp_path / "r-aaa.log"
    log.write_text("predict got secret-input-42\n")
    Replica.objects.create(
        version=v, replica_id="r-aaa", port=1, state=ReplicaState.RUNNING, log_path=str(log)
    )
    v.build_log_path = str(log)
    v.save()
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    client = logged_in(member)
    page = client.get(serving_url(model_name)).content.decode()
    assert ">Logs</a>" not in page and ">Metrics</a>" in page
    for query in ("?tab=logs", "?tab=logs&logs=build", "?tab=logs&replica=r-aaa"):
        html = client.get(serving_url(model_name) + query).content.decode()
        assert "secret-input-42" not in html
        assert "Reading logs needs CAN_MANAGE" in html
    manager = logged_in(owner)
    assert ">Logs</a>" in manager.get(serving_url(model_name)).content.decode()
    assert "secret-input-42" in manager.get(serving_url(model_name) + "?tab=logs").content.decode()


def test_version_detail_shows_each_replica_and_its_node(owner, endpoint, model_name):
    v = add_version(endpoint, "1", "Production")
    Replica.objects.create(
        version=v,
        replica_id="r-ray",
        host="10.0.3.7",
        port=21001,
        node="10.0.3.7/5f3a9c21",
        state=ReplicaState.RUNNING,
    )
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    assert "<th>Node</th>" in html
    assert "r-ray" in html and "10.0.3.7:21001" in html and "10.0.3.7/5f3a9c21" in html


def test_build_logs_tab(owner, endpoint, model_name, tmp_path):
    v = add_version(endpoint, "1", "Production")
    log = tmp_path / "build.log"
    log.write_text("resolved 12 packages\n")
    v.build_log_path = str(log)
    v.save()
    html = logged_in(owner).get(serving_url(model_name) + "?tab=logs&logs=build").content.decode()
    assert "resolved 12 packages" in html


def test_panel_tab_renders_the_partial_for_htmx(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    response = logged_in(owner).get(
        serving_url(model_name) + "?tab=events", HTTP_HX_TARGET="panel", **HTMX
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="panel">')
    assert "Model Events" in html


def test_events_tab_lists_the_timeline(owner, endpoint, model_name):
    v = add_version(endpoint, "1", "Production")
    Event.record(endpoint, EventType.VERSION_READY, "Version 1 is ready.", version=v)
    html = logged_in(owner).get(serving_url(model_name) + "?tab=events").content.decode()
    assert "Version 1 is ready." in html
    assert "Serving enabled by alice@example.com." in html


def test_events_tab_narrows_to_one_version(owner, endpoint, model_name):
    v1 = add_version(endpoint, "1", "Production")
    v2 = add_version(endpoint, "2", "Staging")
    Event.record(endpoint, EventType.VERSION_READY, "Version 1 is ready.", version=v1)
    Event.record(endpoint, EventType.VERSION_READY, "Version 2 is ready.", version=v2)
    html = (
        logged_in(owner)
        .get(serving_url(model_name) + "?version=2&tab=events&scope=version")
        .content.decode()
    )
    assert "Version 2 is ready." in html
    assert "Version 1 is ready." not in html
    assert "Serving enabled by" not in html


def forget_metrics(version_pk: int) -> None:
    """Another test's version may have had the same primary key: start from no buckets."""
    from endpoints.kv import metrics_pattern, redis_client

    client = redis_client()
    for key in client.scan_iter(metrics_pattern(version_pk)):
        client.delete(key)


def test_metrics_tab_draws_the_charts_of_the_window(owner, endpoint, model_name):
    import time

    from endpoints.telemetry import metrics

    v = add_version(endpoint, "1", "Production")
    forget_metrics(v.pk)
    now = time.time()
    for at, errors in ((now - 20, 0), (now - 10, 2), (now, 0)):
        metrics.record_requests(
            v.pk,
            at=at,
            requests=20,
            errors=errors,
            latency_ms_sum=100.0,
            latency_ms_max=9.0,
            histogram={metrics.latency_bucket(4.0): 20},
        )
    metrics.record_replicas(v.pk, 1, at=now - 20)
    html = logged_in(owner).get(serving_url(model_name) + "?tab=metrics").content.decode()
    assert "requests/s" in html
    assert "errors (3.3%)" in html
    for key in ("requests", "latency", "errors", "replicas"):
        chart = html[html.index(f'data-testid="chart-{key}"') :]
        chart = chart[: chart.index("</figure>")]
        assert "<polyline" in chart, key
        assert "No data in this window" not in chart
    # p50/p95/p99 lines, each with the latest value in the legend.
    latency = html[html.index('data-testid="chart-latency"') :]
    assert latency.index("p50") < latency.index("p95") < latency.index("p99")
    assert 'aria-current="page">15 min' in html


def test_metrics_tab_window_choice_downsamples(owner, endpoint, model_name):
    import time

    from endpoints.telemetry import metrics

    v = add_version(endpoint, "1", "Production")
    forget_metrics(v.pk)
    metrics.record_requests(
        v.pk, at=time.time() - 1800, requests=5, errors=0, latency_ms_sum=5.0, latency_ms_max=1.0
    )
    client = logged_in(owner)
    short = client.get(serving_url(model_name) + "?tab=metrics&window=15m").content.decode()
    assert "No data in this window" in short
    hour = client.get(serving_url(model_name) + "?tab=metrics&window=1h").content.decode()
    assert 'aria-current="page">1 hour' in hour
    assert "one point per 30 s" in hour
    chart = hour[hour.index('data-testid="chart-requests"') :]
    assert "<polyline" in chart[: chart.index("</figure>")]


def test_status_poll_on_the_metrics_tab_refreshes_the_charts(owner, endpoint, model_name):
    add_version(endpoint, "1", "Production")
    response = logged_in(owner).get(
        serving_url(model_name) + "?shown=1&tab=metrics&window=6h", HTTP_HX_TARGET="status", **HTMX
    )
    html = response.content.decode()
    assert 'id="metrics" hx-swap-oob="true"' in html
    assert 'aria-current="page">6 hours' in html


def test_panels_of_hidden_endpoint_are_404(outsider, endpoint, model_name):
    for tab in ("logs", "metrics", "events", "compute"):
        response = logged_in(outsider).get(serving_url(model_name) + f"?tab={tab}")
        assert response.status_code == 404
