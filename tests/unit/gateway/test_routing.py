"""The gateway's routing table and its token and permission snapshot, built from database
rows. The per-process cache that Redis invalidates is tested in
``tests/integration/gateway/test_routing_cache.py``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints import services
from endpoints.errors import NotFound, Unavailable
from endpoints.gateway import routing
from endpoints.gateway.routing import Snapshot
from endpoints.gateway.routing_table import build_table
from endpoints.models import (
    AccessToken,
    ComputeConfig,
    PermissionLevel,
    ReplicaState,
    ServiceState,
    hash_token,
)
from tests.support.rows import add_replica, iris_with_two_stages, version_on_ports

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint(owner):
    return iris_with_two_stages(owner)


def test_stage_url_follows_the_alias_and_version_url_the_number(endpoint):
    version_on_ports(endpoint, 1, "Production", ports=(20001, 20002))
    version_on_ports(endpoint, 2, "Staging", ports=(20003,))
    table = build_table()
    production = table.resolve("iris", "Production")
    assert (production.version, production.replicas) == (
        "1",
        (("127.0.0.1", 20001), ("127.0.0.1", 20002)),
    )
    assert table.resolve("iris", "staging").version == "2"  # stages in any case
    assert table.resolve("iris", "2").replicas == (("127.0.0.1", 20003),)
    assert table.addresses() == {("127.0.0.1", p) for p in (20001, 20002, 20003)}


def test_only_running_replicas_are_routed_to(endpoint):
    version = version_on_ports(endpoint, 1, "Production", ports=(20001,))
    for state, port in [(ReplicaState.PENDING, 20002), (ReplicaState.TERMINATING, 20003)]:
        add_replica(version, ("127.0.0.1", port), state=state)
    assert build_table().resolve("iris", "1").replicas == (("127.0.0.1", 20001),)


def test_unknown_model_stage_or_version_is_not_found(endpoint):
    version_on_ports(endpoint, 1, "Production", ports=(20001,))
    table = build_table()
    for name, selector in [("nope", "1"), ("iris", "7"), ("iris", "Staging"), ("iris", "latest")]:
        with pytest.raises(NotFound):
            table.resolve(name, selector)


def test_disabled_serving_is_not_found(endpoint):
    version_on_ports(endpoint, 1, "Production", ports=(20001,))
    endpoint.enabled = False
    endpoint.save()
    with pytest.raises(NotFound):
        build_table().resolve("iris", "Production")


def test_a_version_being_deployed_is_unavailable_not_missing(endpoint):
    version_on_ports(endpoint, 1, "Staging", ServiceState.PENDING)
    table = build_table()
    with pytest.raises(Unavailable):
        table.resolve("iris", "Staging")
    with pytest.raises(Unavailable, match="not ready"):
        table.resolve("iris", "1")


def test_a_failed_version_says_so(endpoint):
    version = version_on_ports(endpoint, 1, "Production", ServiceState.FAILED)
    version.service_message = "the model did not load"
    version.save()
    with pytest.raises(Unavailable, match="failed: the model did not load"):
        build_table().resolve("iris", "1")


def test_a_ready_version_without_replicas_is_routable_and_may_scale_to_zero(endpoint):
    version_on_ports(endpoint, 1, "Production")
    version_on_ports(endpoint, 2, "Staging")
    table = build_table()
    production, staging = table.resolve("iris", "Production"), table.resolve("iris", "Staging")
    assert production.routable and staging.routable
    assert production.replicas == staging.replicas == ()
    assert (production.scale_to_zero, staging.scale_to_zero) == (False, True)


def test_the_newest_stage_config_decides_scale_to_zero(endpoint):
    version_on_ports(endpoint, 1, "Production")
    ComputeConfig.objects.create(
        endpoint=endpoint,
        stage="Production",
        scale_to_zero_enabled=True,
        creation_timestamp=ComputeConfig.objects.order_by("-creation_timestamp")
        .first()
        .creation_timestamp
        + 1,
    )
    assert build_table().resolve("iris", "Production").scale_to_zero


# --- tokens and permissions --------------------------------------------------------------------


def _snapshot() -> Snapshot:
    return Snapshot(table=build_table(), generation=0, built_at=0.0)


def test_tokens_are_looked_up_once_per_snapshot(owner, django_assert_num_queries):
    _, plaintext = services.token_create(user=owner)
    snapshot = _snapshot()
    with django_assert_num_queries(1):
        assert snapshot.user_for(plaintext).user == owner
        assert snapshot.user_for(plaintext).user == owner
    with django_assert_num_queries(1):
        assert snapshot.user_for("sui_unknown") is None
        assert snapshot.user_for("sui_unknown") is None


def test_an_expired_token_is_refused_from_the_cache(owner):
    token, plaintext = services.token_create(
        user=owner, expires_at=timezone.now() + timedelta(hours=1)
    )
    snapshot = _snapshot()
    assert snapshot.user_for(plaintext) is not None
    # Expiry is checked on every use, without asking the database again.
    snapshot._tokens[hash_token(plaintext)] = routing.CachedToken(
        token_pk=token.pk, user=owner, expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert snapshot.user_for(plaintext) is None


def test_revoked_and_inactive_tokens_are_refused(owner, member):
    token, plaintext = services.token_create(user=owner)
    services.token_revoke(token_id=token.pk, user=owner)
    _, other = services.token_create(user=member)
    member.is_active = False
    member.save()
    snapshot = _snapshot()
    assert snapshot.user_for(plaintext) is None
    assert snapshot.user_for(other) is None
    assert AccessToken.objects.count() == 2


def test_permissions_follow_the_endpoint_rules(endpoint, owner, member, outsider, admin_user):
    services.permission_set(endpoint=endpoint, user=member, level="CAN_QUERY", by=owner)
    routes = build_table().endpoint("iris")
    snapshot = _snapshot()
    assert snapshot.may(owner, routes, PermissionLevel.CAN_QUERY)  # the creator manages
    assert snapshot.may(admin_user, routes, PermissionLevel.CAN_MANAGE)
    assert snapshot.may(member, routes, PermissionLevel.CAN_QUERY)
    assert not snapshot.may(member, routes, PermissionLevel.CAN_MANAGE)
    assert not snapshot.may(outsider, routes, PermissionLevel.CAN_VIEW)
