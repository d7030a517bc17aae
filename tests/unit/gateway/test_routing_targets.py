"""The routing table for MLflow aliases, traffic splits and inference tables, built from
database rows: an alias URL follows its pointer, an alias still deploying is 503 and an
unknown one 404, a split's versions share the requests by weight, and the snapshot carries
each endpoint's capture rate."""

from __future__ import annotations

from collections import Counter

import pytest

from endpoints.errors import NotFound, Unavailable
from endpoints.gateway.routing_table import build_table
from endpoints.models import (
    ComputeConfig,
    InferenceTable,
    ServiceState,
    ServingEndpoint,
    StageAlias,
    TrafficSplit,
)
from tests.support.rows import add_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint(owner) -> ServingEndpoint:
    endpoint = ServingEndpoint.objects.create(registered_model_name="iris", creator=owner)
    ComputeConfig.objects.create(endpoint=endpoint, stage="Production")
    return endpoint


def served(endpoint, number: str, port: int, *aliases: str, stage: str = "Production", **kw):
    version = add_version(
        endpoint,
        number,
        stage,
        replicas=[("127.0.0.1", port)],
        registry_aliases=list(aliases),
        **kw,
    )
    for alias in aliases:
        if version.service_state == ServiceState.READY:
            StageAlias.objects.update_or_create(
                endpoint=endpoint, stage=f"@{alias}", defaults={"version": version}
            )
    return version


def test_an_alias_url_follows_its_pointer(endpoint):
    served(endpoint, "1", 20001, "champion")
    table = build_table()
    assert table.resolve("iris", "@champion").version == "1"
    with pytest.raises(NotFound):
        table.resolve("iris", "@challenger")


def test_an_alias_whose_only_version_is_deploying_is_unavailable(endpoint):
    served(endpoint, "1", 20001, "challenger", stage="", state=ServiceState.PENDING)
    with pytest.raises(Unavailable, match="@challenger"):
        build_table().resolve("iris", "@challenger")


def test_a_split_shares_a_target_s_requests_by_weight(endpoint):
    served(endpoint, "1", 20001, "champion")
    served(endpoint, "2", 20002, "challenger", stage="Staging")
    TrafficSplit.objects.create(endpoint=endpoint, target="@champion", weights={"1": 75, "2": 25})
    table = build_table()
    picked = Counter(table.resolve("iris", "@champion").version for _ in range(8000))
    assert 0.72 <= picked["1"] / 8000 <= 0.78
    assert table.resolve("iris", "@challenger").version == "2"  # other targets unaffected
    assert table.resolve("iris", "Production").version == "1"


def test_the_snapshot_carries_the_capture_rate(endpoint):
    assert build_table().endpoint("iris").endpoint.capture_rate == 0.0
    InferenceTable.objects.create(endpoint=endpoint, enabled=True, sample_rate=0.2)
    assert build_table().endpoint("iris").endpoint.capture_rate == pytest.approx(0.2)
    InferenceTable.objects.filter(endpoint=endpoint).update(enabled=False)
    assert build_table().endpoint("iris").endpoint.capture_rate == 0.0
