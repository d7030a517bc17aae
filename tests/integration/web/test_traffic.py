"""The Serving tab and MLflow aliases: alias URLs beside the stage URLs, alias tags on
versions, the Traffic panel (set an alias, choose the served aliases, the split
controls), an alias's row in Compute Settings, a split in the Metrics tab and the
Inference table panel. Rows are written as the reconcile loop would; the registry is this
run's real MLflow registry with a model of each test's own."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import pandas as pd
import pytest
from django.test import Client

from endpoints import registry, services
from endpoints.models import (
    ComputeConfig,
    InferenceTable,
    ServingEndpoint,
    StageAlias,
    TrafficSplit,
)
from endpoints.telemetry import inference_tables
from tests.support.rows import add_version

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def endpoint(model_name, owner) -> ServingEndpoint:
    return services.endpoint_enable(name=model_name, user=owner)


def serving_url(name: str, **query: str) -> str:
    suffix = "&".join(f"{k}={v}" for k, v in query.items())
    return f"/models/{name}/serving/" + (f"?{suffix}" if suffix else "")


def test_alias_urls_are_listed_beside_the_stage_urls_and_versions_carry_their_aliases(
    owner, endpoint, model_name
):
    version = add_version(endpoint, "1", "Production", registry_aliases=["champion"])
    StageAlias.objects.create(endpoint=endpoint, stage="@champion", version=version)
    html = logged_in(owner).get(serving_url(model_name)).content.decode()
    production = f"http://testserver/model-endpoint/{model_name}/Production/invocations"
    champion = f"http://testserver/model-endpoint/{model_name}/@champion/invocations"
    assert production in html and champion in html
    assert html.index(production) < html.index(champion)
    assert '<span class="chip chip-alias">@champion</span>' in html


def test_the_traffic_panel_sets_an_alias_in_mlflow(owner, endpoint, model_name):
    client = logged_in(owner)
    response = client.post(
        f"/models/{model_name}/serving/alias/", {"alias": "@champion", "version": "2"}, follow=True
    )
    assert response.status_code == 200
    assert registry.get_model(model_name).aliases == {"champion": "2"}
    html = response.content.decode()
    assert "@champion now points at version 2" in html
    assert 'data-testid="alias-champion"' in html
    client.post(f"/models/{model_name}/serving/alias/", {"alias": "champion", "version": ""})
    assert registry.get_model(model_name).aliases == {}


def test_the_traffic_panel_limits_the_served_aliases(owner, endpoint, model_name):
    client = logged_in(owner)
    url = f"/models/{model_name}/serving/served-aliases/"
    client.post(url, {"mode": "some", "aliases": ["champion"], "extra": "@challenger"})
    endpoint.refresh_from_db()
    assert endpoint.served_aliases == ["challenger", "champion"]
    client.post(url, {"mode": "all"})
    endpoint.refresh_from_db()
    assert endpoint.served_aliases is None
    response = client.post(url, {"mode": "some", "extra": "not valid"}, follow=True)
    assert "Choose every alias, or the aliases to serve." in response.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.served_aliases is None


def test_traffic_writes_need_manage(owner, member, outsider, endpoint, model_name):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    url = f"/models/{model_name}/serving/alias/"
    assert logged_in(member).post(url, {"alias": "x", "version": "1"}).status_code == 403
    assert logged_in(outsider).post(url, {"alias": "x", "version": "1"}).status_code == 404
    assert registry.get_model(model_name).aliases == {}
    page = logged_in(member).get(serving_url(model_name, tab="traffic")).content.decode()
    assert 'data-testid="alias-form"' not in page


def test_an_alias_has_its_own_compute_settings(owner, endpoint, model_name):
    add_version(endpoint, "3", "", registry_aliases=["champion"])
    client = logged_in(owner)
    html = client.get(serving_url(model_name, tab="compute")).content.decode()
    assert 'data-testid="compute-alias-champion"' in html
    client.post(
        f"/models/{model_name}/serving/compute/",
        {"stage": "@champion", "workload_size": "Medium"},
    )
    assert (
        ComputeConfig.objects.filter(endpoint=endpoint, stage="@champion").first().workload_size
        == "Medium"
    )


def test_the_split_controls_save_promote_and_roll_back(owner, endpoint, model_name):
    v1 = add_version(endpoint, "1", "Production", registry_aliases=["champion"])
    StageAlias.objects.create(endpoint=endpoint, stage="@champion", version=v1)
    add_version(endpoint, "2", "Staging")
    client = logged_in(owner)
    page = client.get(serving_url(model_name, tab="traffic")).content.decode()
    assert 'data-testid="split-alias-champion"' in page and 'data-testid="split-production"' in page
    url = f"/models/{model_name}/serving/split/"
    form = {"target": "@champion", "action": "split", "weight_1": "90", "weight_2": "10"}
    page = client.post(url, form, follow=True).content.decode()
    assert "@champion traffic split saved." in page
    assert TrafficSplit.objects.get(endpoint=endpoint, target="@champion").weights == {
        "1": 90,
        "2": 10,
    }
    assert "Roll back to v1" in page
    page = client.post(url, {**form, "weight_2": "20"}, follow=True).content.decode()
    assert "must add up to 100" in page
    client.post(url, {"target": "@champion", "action": "rollback"})
    assert not TrafficSplit.objects.exists()
    client.post(url, {"target": "@champion", "action": "promote-2"})
    assert registry.get_model(model_name).aliases == {"champion": "2"}
    assert TrafficSplit.objects.get(endpoint=endpoint).weights == {"2": 100}


def test_the_metrics_tab_shows_a_split_s_versions_side_by_side(owner, endpoint, model_name):
    v1 = add_version(endpoint, "1", "Production")
    add_version(endpoint, "2", "Staging")
    TrafficSplit.objects.create(endpoint=endpoint, target="Production", weights={"1": 90, "2": 10})
    html = logged_in(owner).get(serving_url(model_name, tab="metrics", version=v1.version))
    table = html.content.decode().split('data-testid="split-metrics"')[1].split("</table>")[0]
    assert "Version 1" in table and "90 %" in table and "Version 2" in table and "10 %" in table


def captured_row(model_name: str, request: str = '{"inputs": [1]}') -> tuple:
    return (
        time.time(),
        model_name,
        "Production",
        "1",
        200,
        2.5,
        7,
        request,
        '{"predictions": [0]}',
    )


def test_the_inference_panel_turns_capture_on_and_shows_rows(
    owner, endpoint, model_name, settings, tmp_path
):
    settings.SERVING = {**settings.SERVING, "INFERENCE_DIR": tmp_path}
    client = logged_in(owner)
    client.post(
        f"/models/{model_name}/serving/inference/", {"enabled": "on", "sample_percent": "50"}
    )
    table = InferenceTable.objects.get(endpoint=endpoint)
    assert (table.enabled, table.sample_rate) == (True, 0.5)
    inference_tables.write_batch(model_name, datetime.now(UTC).date(), [captured_row(model_name)])
    html = client.get(serving_url(model_name, tab="inference")).content.decode()
    assert "On, capturing 50.0 % of requests" in html
    assert "{&quot;predictions&quot;: [0]}" in html
    assert 'data-testid="inference-rows-withheld"' not in html
    download = client.get(f"/models/{model_name}/serving/inference/download/")
    assert download.status_code == 200
    assert download.streaming
    assert len(pd.read_parquet(io.BytesIO(b"".join(download.streaming_content)))) == 1


def test_captured_rows_and_the_download_need_manage_settings_need_view(
    owner, member, outsider, endpoint, model_name, settings, tmp_path
):
    settings.SERVING = {**settings.SERVING, "INFERENCE_DIR": tmp_path}
    secret = '{"inputs": ["a customer\'s private text"]}'
    inference_tables.write_batch(
        model_name, datetime.now(UTC).date(), [captured_row(model_name, secret)]
    )
    page = serving_url(model_name, tab="inference")
    download = f"/models/{model_name}/serving/inference/download/"
    for level in ("CAN_VIEW", "CAN_QUERY"):
        services.permission_set(endpoint=endpoint, user=member, level=level, by=owner)
        html = logged_in(member).get(page).content.decode()
        assert 'data-testid="inference-state"' in html  # the settings
        assert 'data-testid="inference-rows-withheld"' in html
        assert "needs CAN_MANAGE" in html
        assert "private text" not in html
        assert download not in html
        assert logged_in(member).get(download).status_code == 403
    assert logged_in(outsider).get(download).status_code == 404
    services.permission_set(endpoint=endpoint, user=member, level="CAN_MANAGE", by=owner)
    assert "private text" in logged_in(member).get(page).content.decode()


def test_inference_writes_need_manage(owner, member, endpoint, model_name):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    url = f"/models/{model_name}/serving/inference/"
    assert logged_in(member).post(url, {"enabled": "on"}).status_code == 403
    assert not InferenceTable.objects.exists()


def test_the_panel_names_files_it_could_not_read_and_shows_the_rest(
    owner, endpoint, model_name, settings, tmp_path
):
    settings.SERVING = {**settings.SERVING, "INFERENCE_DIR": tmp_path}
    good = inference_tables.write_batch(
        model_name, datetime.now(UTC).date(), [captured_row(model_name, "still here")]
    )
    (good.parent / "0-broken.parquet").write_bytes(b"PAR1 and then nothing")
    html = logged_in(owner).get(serving_url(model_name, tab="inference")).content.decode()
    assert "still here" in html
    warning = html.split('data-testid="inference-unreadable"')[1].split("</p>")[0]
    assert "1 file of the inference table could not be read" in warning
    assert "0-broken.parquet" in warning
