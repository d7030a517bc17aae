"""The Serving tab and MLflow aliases: alias URLs beside the stage URLs, alias tags on
versions, the Traffic panel (set an alias, choose the served aliases) and an alias's row
in Compute Settings. Rows are written as the reconcile loop would; the registry is this
run's real MLflow registry with a model of each test's own."""

from __future__ import annotations

import pytest
from conftest import add_version
from django.test import Client

from endpoints import registry, services
from endpoints.models import ComputeConfig, ServingEndpoint, StageAlias

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
