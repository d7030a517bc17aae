"""The routing table: which replicas answer each URL an enabled endpoint serves (a stage,
an ``@alias`` or a version), its traffic splits, and building it from the database in a
fixed number of queries. The gateway keeps one per snapshot (``routing``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from endpoints.errors import NotFound, Unavailable
from endpoints.models import (
    ComputeConfig,
    EndpointVersion,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    StageAlias,
)
from endpoints.targets import is_alias, version_targets

from .capture import rate_expression
from .split import Split, build_splits, load_splits

Address = tuple[str, int]


_STAGE_NAMES = {"production": "Production", "staging": "Staging"}


@dataclass(frozen=True)
class Target:
    """One endpoint version as the gateway routes to it."""

    version_pk: int
    endpoint_pk: int
    model_name: str
    version: str
    service_state: str
    service_message: str
    # READY, or what a stage alias points at: requests wait for a replica rather than fail.
    routable: bool
    scale_to_zero: bool
    replicas: tuple[Address, ...]


@dataclass(frozen=True)
class EndpointRoutes:
    endpoint: ServingEndpoint  # only pk, name, creator_id and capture_rate are loaded
    versions: dict[str, Target]
    stages: dict[str, Target]
    # Stages whose versions are still being deployed (no alias yet): 503, not 404.
    deploying_stages: frozenset[str]
    splits: dict[str, Split] = field(default_factory=dict)  # by target: weighted versions


@dataclass(frozen=True)
class RoutingTable:
    endpoints: dict[str, EndpointRoutes]

    def endpoint(self, name: str) -> EndpointRoutes:
        routes = self.endpoints.get(name)
        if routes is None:
            raise NotFound(f"Serving is not enabled for registered model '{name}'.")
        return routes

    def resolve(self, name: str, selector: str) -> Target:
        """The version a ``<name>/<stage|@alias|version>`` URL answers with (by weight for
        a split target). Raises NotFound for an unknown model, target or version,
        Unavailable for a known one that cannot answer yet."""
        routes = self.endpoint(name)
        stage = _STAGE_NAMES.get(selector.lower()) or (selector if is_alias(selector) else None)
        if stage is not None:
            return _resolve_stage(routes, name, stage)
        target = routes.versions.get(selector)
        if target is None:
            raise NotFound(f"Model '{name}' has no served version or stage '{selector}'.")
        if not target.routable and not target.replicas:
            raise Unavailable(_not_ready_message(target))
        return target

    def lookup(self, target: Target) -> Target | None:
        """``target`` as this table has it (None when its endpoint or version is gone)."""
        routes = self.endpoints.get(target.model_name)
        return routes.versions.get(target.version) if routes else None

    def addresses(self) -> set[Address]:
        return {
            address
            for routes in self.endpoints.values()
            for target in routes.versions.values()
            for address in target.replicas
        }


def _resolve_stage(routes: EndpointRoutes, name: str, stage: str) -> Target:
    split = routes.splits.get(stage)
    if split is not None:
        return split.pick()
    target = routes.stages.get(stage)
    if target is not None:
        return target
    if stage in routes.deploying_stages:
        raise Unavailable(f"No version of model '{name}' in {stage} is ready yet.")
    raise NotFound(f"Model '{name}' has no version served in {stage}.")


def _not_ready_message(target: Target) -> str:
    detail = f": {target.service_message}" if target.service_message else ""
    if target.service_state == ServiceState.FAILED:
        return f"Version {target.version} of model '{target.model_name}' failed{detail}"
    return f"Version {target.version} of model '{target.model_name}' is not ready yet{detail}"


def build_table() -> RoutingTable:
    """Read the routing table from the database (six queries)."""
    endpoints = {
        e.pk: e
        for e in ServingEndpoint.objects.filter(enabled=True)
        .only("pk", "registered_model_name", "creator_id")
        .annotate(capture_rate=rate_expression())
    }
    versions = list(
        EndpointVersion.objects.filter(endpoint_id__in=endpoints).select_related("service_config")
    )
    alias_rows = StageAlias.objects.filter(endpoint_id__in=endpoints).values_list(
        "version_id", "stage"
    )
    by_version_alias: dict[int, list[str]] = {}
    for version_pk, stage in alias_rows:
        by_version_alias.setdefault(version_pk, []).append(stage)
    replicas: dict[int, list[Address]] = {}
    replica_rows = Replica.objects.filter(
        state=ReplicaState.RUNNING, version__endpoint_id__in=endpoints
    ).values_list("version_id", "host", "port")
    for version_pk, host, port in replica_rows:
        replicas.setdefault(version_pk, []).append((host, port))
    stage_configs = _current_stage_configs(endpoints)
    splits = load_splits(endpoints)

    table: dict[str, EndpointRoutes] = {}
    for endpoint in endpoints.values():
        own = [v for v in versions if v.endpoint_id == endpoint.pk]
        routes = _endpoint_routes(endpoint, own, by_version_alias, replicas, stage_configs)
        routes.splits.update(build_splits(splits.get(endpoint.pk, {}), routes.versions))
        table[endpoint.registered_model_name] = routes
    return RoutingTable(endpoints=table)


def _current_stage_configs(endpoints: dict[int, ServingEndpoint]) -> dict[tuple[int, str], bool]:
    """{(endpoint pk, stage): scale_to_zero_enabled} of each stage's newest config."""
    newest: dict[tuple[int, str], bool] = {}
    rows = (
        ComputeConfig.objects.filter(endpoint_id__in=endpoints)
        .order_by("creation_timestamp", "pk")
        .values_list("endpoint_id", "stage", "scale_to_zero_enabled")
    )
    for endpoint_pk, stage, scale_to_zero in rows:
        newest[(endpoint_pk, stage)] = scale_to_zero
    return newest


def _endpoint_routes(
    endpoint: ServingEndpoint,
    versions: list[EndpointVersion],
    aliases: dict[int, list[str]],
    replicas: dict[int, list[Address]],
    stage_configs: dict[tuple[int, str], bool],
) -> EndpointRoutes:
    by_version: dict[str, Target] = {}
    stages: dict[str, Target] = {}
    deploying: set[str] = set()
    for version in versions:
        stage_aliases = aliases.get(version.pk, [])
        target = Target(
            version_pk=version.pk,
            endpoint_pk=endpoint.pk,
            model_name=endpoint.registered_model_name,
            version=version.version,
            service_state=version.service_state,
            service_message=version.service_message,
            routable=version.service_state == ServiceState.READY or bool(stage_aliases),
            scale_to_zero=_scales_to_zero(version, stage_aliases, stage_configs),
            replicas=tuple(sorted(replicas.get(version.pk, []))),
        )
        by_version[version.version] = target
        for stage in stage_aliases:
            stages[stage] = target
        if version.desired:
            deploying.update(version_targets(version.registry_stage, version.registry_aliases))
    return EndpointRoutes(
        endpoint=endpoint,
        versions=by_version,
        stages=stages,
        deploying_stages=frozenset(deploying),
    )


def _scales_to_zero(
    version: EndpointVersion,
    stage_aliases: list[str],
    stage_configs: dict[tuple[int, str], bool],
) -> bool:
    if version.service_config is not None and version.service_config.scale_to_zero_enabled:
        return True
    stages = {*stage_aliases, *version_targets(version.registry_stage, version.registry_aliases)}
    return any(stage_configs.get((version.endpoint_id, stage), False) for stage in stages)
