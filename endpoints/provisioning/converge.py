"""One reconcile pass over one endpoint: observe, plan, apply, step by step.

Each step reads fresh state (``observe``), asks the pure planner what to do (``health``,
``plan``) and executes it (``apply``), so a later step sees what an earlier one did: a
replica found healthy makes its version READY in the same pass, and that version gets
its stage alias in the same pass too. Replicas forked from a warm interpreter answer
within moments: when the plan asks for it (``AwaitStarted``), the pass waits for the ones
it started and goes through the steps once more, so they serve when the pass ends.
"""

from __future__ import annotations

from collections.abc import Callable

from endpoints.models import ComputeConfig, EndpointVersion, ServingEndpoint
from endpoints.runtime import get_runtime
from endpoints.targets import config_target

from . import observe, plan, plan_serving, replicas
from .actions import Action, PrepareVersion
from .apply import execute
from .health import plan_replica
from .passes import Pass


def run_pass(pk: int, *, fence: Callable[[], None] = lambda: None) -> float | None:
    """One reconcile pass; the seconds until a follow-up pass, None when none is needed.
    ``fence`` is called before each step that acts and raises when the pass must stop."""
    endpoint = ServingEndpoint.objects.filter(pk=pk).first()
    if endpoint is None:
        return None
    run = Pass(endpoint, get_runtime(), fence)
    check_replicas(run)
    if endpoint.enabled:
        converge(run)
        if run.await_seconds:
            settle_started(run)
    else:
        teardown(run)
    run.finish()
    return run.follow_up_seconds if run.pending else None


def settle_started(run: Pass) -> None:
    """Wait (bounded) for the replicas this pass started, then observe and plan again:
    the ones that answer become Running, their versions READY, the aliases move."""
    replicas.await_answers(run.runtime, run.started, seconds=run.await_seconds)
    run.started.clear()
    run.await_seconds = 0.0  # once per pass: what starts now is probed by a follow-up
    check_replicas(run)
    # A request held for a woken version is answered as soon as its replica is Running.
    run.publish()
    converge(run)


def check_replicas(run: Pass) -> None:
    """Update replica rows from what their processes do."""
    limits = observe.limits()
    for replica, health in observe.replica_health(run.endpoint, run.runtime):
        execute(run, plan_replica(replica=replica, health=health, now=observe.now(), limits=limits))


def teardown(run: Pass) -> None:
    endpoint = run.endpoint
    planned = plan_serving.plan_teardown(
        endpoint=observe.endpoint_view(endpoint),
        versions=observe.versions(endpoint),
        has_aliases=endpoint.aliases.exists(),
        replicas_left=observe.replicas_left(endpoint),
    )
    execute(run, planned)


def converge(run: Pass) -> None:
    endpoint = run.endpoint
    registry = observe.registry_stages(endpoint)
    if registry.error:
        execute(run, plan.plan_registry_unavailable(error=registry.error))
        return
    synced = plan.plan_sync(
        stages=registry.stages, aliases=registry.aliases, versions=observe.versions(endpoint)
    )
    execute(run, synced)
    forget_stale_files(endpoint, registry.model_dirs)
    configs: dict[str, ComputeConfig] = {}
    splits = observe.splits(endpoint)
    alias_targets = set(observe.aliases(endpoint).values())
    alias_targets |= {v for weights in splits.values() for v, w in weights.items() if w > 0}
    for version in observe.version_rows(endpoint):
        if version.desired:
            target = config_target(version.registry_stage, version.registry_aliases)
            if target not in configs:
                configs[target] = _config_for(endpoint, target)
            converge_version(run, version, configs[target])
        elif version.version in alias_targets:
            # Left its stage or alias, but a pointer or a split still sends it requests.
            view = observe.version_view(version, replacing=run.replaced.get(version.version, 0))
            execute(run, plan.plan_heal(version=view))
    planned = plan_serving.plan_serving(
        endpoint=observe.endpoint_view(endpoint),
        versions=observe.versions(endpoint),
        aliases=observe.aliases(endpoint),
        model_exists=registry.exists,
        splits=splits,
    )
    execute(run, planned)


def _config_for(endpoint: ServingEndpoint, target: str) -> ComputeConfig:
    config = endpoint.current_compute_config(target)
    if config is None:  # an alias's first version, or configs made before configs existed
        config = ComputeConfig.objects.create(endpoint=endpoint, stage=target)
    return config


def converge_version(run: Pass, version: EndpointVersion, config: ComputeConfig) -> None:
    planned = _plan_version(run, version, config)
    execute(run, planned)
    if not any(isinstance(action, PrepareVersion) for action in planned):
        return
    version = observe.version_row(version.pk)
    error = run.build_errors.get(version.version)
    if error:
        failed = plan.fail_version(
            observe.version_view(version), error, config=config.pk, build=True
        )
        execute(run, failed)
    else:  # prepared: plan again, now that it can start
        execute(run, _plan_version(run, version, config))


def _plan_version(run: Pass, version: EndpointVersion, config: ComputeConfig) -> list[Action]:
    view = observe.version_view(version, replacing=run.replaced.get(version.version, 0))
    return plan.plan_version(
        version=view,
        config=observe.config_view(config),
        load=observe.load_of(version.pk),
        now=observe.now(),
        limits=observe.limits(),
    )


def forget_stale_files(endpoint: ServingEndpoint, model_dirs: dict[str, str]) -> None:
    """A version whose files are not the registry's version of that number now (the model
    was deleted and registered again, or they predate keyed directories) is prepared
    again: it is never served from another model's files."""
    for version in endpoint.versions.exclude(model_path=""):
        expected = model_dirs.get(version.version)
        if expected and version.model_path != expected:
            EndpointVersion.objects.filter(pk=version.pk).update(model_path="", environment_path="")
