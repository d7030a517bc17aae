"""Revocation that holds: every write that changes who may do what reaches the gateway's
token and permission caches as soon as it commits, whoever makes it (a service, the
Django admin, a shell), and a gateway that cannot reach Redis re-reads the database at
least every second instead of serving a revoked token from memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from endpoints.dev import devstack
from endpoints.gateway import reporting, routing
from endpoints.gateway import scoring as gateway_app
from endpoints.gateway.routing import RoutingCache
from endpoints.models import (
    AccessToken,
    ComputeConfig,
    EndpointPermission,
    PermissionLevel,
    ServicePrincipal,
    ServiceState,
    ServingEndpoint,
    hash_token,
)
from tests.support.rows import add_version

pytestmark = [pytest.mark.usefixtures("redis_server")]


@pytest.fixture
def endpoint(owner) -> ServingEndpoint:
    endpoint = ServingEndpoint.objects.create(registered_model_name="iris", creator=owner)
    ComputeConfig.objects.create(endpoint=endpoint, stage="Production")
    add_version(endpoint, "1", "Production", state=ServiceState.READY, replicas=[])
    return endpoint


def may_query(cache: RoutingCache, raw: str, name: str = "iris") -> bool:
    """What the gateway answers for this token now: allowed to query ``name`` or not."""
    snapshot = cache.current()
    token = snapshot.user_for(raw)
    if token is None:
        return False
    routes = snapshot.table.endpoints.get(name)
    return routes is not None and snapshot.may(token.user, routes, PermissionLevel.CAN_QUERY)


def admin_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


# --- writes outside the services ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_token_revoked_in_admin_is_refused_by_the_gateway_at_once(
    endpoint, member, admin_user, make_token
):
    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    raw = make_token(member)
    cache = RoutingCache()
    assert may_query(cache, raw)  # now cached by the gateway
    token = AccessToken.objects.get(token_hash=hash_token(raw))
    response = admin_client(admin_user).post(
        "/admin/endpoints/accesstoken/",
        {"action": "revoke", "_selected_action": [str(token.pk)]},
    )
    assert response.status_code == 302
    assert not may_query(cache, raw)


@pytest.mark.django_db(transaction=True)
def test_user_deactivated_in_admin_is_refused_by_the_gateway_at_once(
    endpoint, member, admin_user, make_token
):
    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    raw = make_token(member)
    cache = RoutingCache()
    assert may_query(cache, raw)
    client = admin_client(admin_user)
    joined = timezone.localtime(member.date_joined)
    response = client.post(
        f"/admin/auth/user/{member.pk}/change/",
        {
            "username": member.username,
            "email": member.email,
            "is_active": "",  # unticked
            "date_joined_0": joined.strftime("%Y-%m-%d"),
            "date_joined_1": joined.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 302, response.content[-2000:]
    member.refresh_from_db()
    assert not member.is_active
    assert not may_query(cache, raw)


def _revoke_in_a_shell(raw: str, **_: object) -> None:
    token = AccessToken.objects.get(token_hash=hash_token(raw))
    token.revoked_at = timezone.now()
    token.save()


def _delete_the_token(raw: str, **_: object) -> None:
    AccessToken.objects.filter(token_hash=hash_token(raw)).delete()


def _deactivate_the_user(raw: str, *, user, **_: object) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def _remove_superuser(raw: str, *, user, **_: object) -> None:
    user.is_superuser = False
    user.save()


def _remove_the_grant(raw: str, *, user, **_: object) -> None:
    EndpointPermission.objects.filter(user=user).delete()


def _lower_the_grant(raw: str, *, user, **_: object) -> None:
    grant = EndpointPermission.objects.get(user=user)
    grant.level = PermissionLevel.CAN_VIEW
    grant.save()


def _delete_the_principal(raw: str, *, user, **_: object) -> None:
    user.delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("change", "who"),
    [
        (_revoke_in_a_shell, "member"),
        (_delete_the_token, "member"),
        (_deactivate_the_user, "member"),
        (_remove_superuser, "admin"),
        (_remove_the_grant, "member"),
        (_lower_the_grant, "member"),
        (_delete_the_principal, "principal"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_access_changed_outside_the_services_is_refused_by_the_gateway_at_once(
    endpoint, member, admin_user, make_token, django_user_model, change: Callable, who: str
):
    principal = django_user_model.objects.create(username="bot")
    ServicePrincipal.objects.create(user=principal, created_by=admin_user)
    users = {"member": member, "admin": admin_user, "principal": principal}
    user = users[who]
    if not user.is_superuser:
        EndpointPermission.objects.create(endpoint=endpoint, user=user, level="CAN_QUERY")
    raw = make_token(user)
    cache = RoutingCache()
    assert may_query(cache, raw)
    change(raw, user=user)
    assert not may_query(cache, raw)


@pytest.mark.django_db(transaction=True)
def test_writes_that_change_no_access_leave_the_gateway_cache_alone(endpoint, member, make_token):
    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    make_token(member)
    cache = RoutingCache()
    first = cache.current()
    member.last_login = timezone.now()
    member.save(update_fields=["last_login"])
    endpoint.state_message = "Serving is ready."
    endpoint.save(update_fields=["state_message", "updated_at"])
    assert cache.current() is first


# --- Redis away ------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path, stack_log_dir: Path, settings) -> Iterator[devstack.ManagedProcess]:
    """A Redis of this test's own (the session's one stays up for the others), which the
    test may stop; REDIS_URL points at it meanwhile."""
    url = f"redis://127.0.0.1:{devstack.free_port()}/0"
    server = devstack.start_redis(url, tmp_path / "redis", stack_log_dir, timeout=20)
    settings.REDIS_URL = url
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.django_db
def test_gateway_refreshes_tokens_from_database_while_redis_is_down(
    endpoint, member, make_token, own_redis
):
    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    raw = make_token(member)
    cache = RoutingCache()
    assert may_query(cache, raw)
    own_redis.stop()
    # Revoked while nobody can be told (no signal, no bump): only the database knows.
    AccessToken.objects.filter(token_hash=hash_token(raw)).update(revoked_at=timezone.now())
    snapshot = cache.current()
    # Once the snapshot is a second old, the next request reads the database again.
    snapshot.built_at -= routing.UNCONFIRMED_MAX_AGE_SECONDS + 0.01
    assert not may_query(cache, raw)
    rebuilt = cache.current()
    assert rebuilt is not snapshot and rebuilt.unconfirmed


@pytest.mark.django_db
def test_gateway_flusher_refreshes_an_idle_process_while_redis_is_down(
    endpoint, member, make_token, own_redis
):
    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    raw = make_token(member)
    cache = RoutingCache()
    assert may_query(cache, raw)
    own_redis.stop()
    EndpointPermission.objects.filter(user=member).delete()  # in a shell: no bump arrives
    old = cache.latest
    old.built_at -= routing.UNCONFIRMED_MAX_AGE_SECONDS + 0.01
    cache.refresh_if_old()  # what the flusher does once a second
    assert cache.latest is not old
    routes = cache.latest.table.endpoints["iris"]
    assert not cache.latest.may(member, routes, PermissionLevel.CAN_QUERY)


@pytest.mark.django_db
def test_a_snapshot_built_while_redis_was_down_is_rebuilt_when_it_answers_again(
    endpoint, member, make_token, own_redis, tmp_path, stack_log_dir, settings
):
    cache = RoutingCache()
    cache.current()
    own_redis.stop()
    cache.latest.built_at -= routing.UNCONFIRMED_MAX_AGE_SECONDS + 0.01
    unconfirmed = cache.current()
    assert unconfirmed.unconfirmed
    back = devstack.start_redis(settings.REDIS_URL, tmp_path / "redis", stack_log_dir, timeout=20)
    try:
        cache._redis_failed_at = -routing.REDIS_RETRY_SECONDS  # let it ask again now
        cache.watcher._failed_at = -routing.REDIS_RETRY_SECONDS
        confirmed = cache.current()
        assert confirmed is not unconfirmed and not confirmed.unconfirmed
    finally:
        back.stop()


@pytest.mark.django_db
def test_a_failing_load_report_does_not_stop_the_refresh(endpoint, monkeypatch):
    gateway = gateway_app.Gateway()
    old = gateway.routing.current()
    target = old.table.resolve("iris", "1")
    gateway.load.admit(target.version_pk, limit=10)
    gateway.load.finish(target.version_pk, 200, 1.0)

    def broken(*args, **kwargs):
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(reporting.load_reports, "report", broken)
    old.built_at -= routing.MAX_AGE_SECONDS + 1
    gateway.flush()
    assert gateway.routing.latest is not old


def test_one_failing_step_does_not_stop_the_others():
    ran = []

    def fails():
        raise RuntimeError("boom")

    failed = reporting.run_each(
        ("first", fails), ("second", lambda: ran.append(2)), ("third", lambda: ran.append(3))
    )
    assert failed == ["first"] and ran == [2, 3]


@pytest.mark.django_db
def test_gateway_refuses_when_neither_redis_nor_the_database_answers(
    endpoint, member, make_token, own_redis, monkeypatch
):
    from django.db import OperationalError

    from endpoints.errors import Unavailable

    EndpointPermission.objects.create(endpoint=endpoint, user=member, level="CAN_QUERY")
    raw = make_token(member)
    cache = RoutingCache()
    assert may_query(cache, raw)
    own_redis.stop()

    def no_database():
        raise OperationalError("database is locked")

    monkeypatch.setattr(routing, "build_table", no_database)
    cache.latest.built_at -= routing.UNCONFIRMED_MAX_AGE_SECONDS + 0.01
    with pytest.raises(Unavailable):
        may_query(cache, raw)
