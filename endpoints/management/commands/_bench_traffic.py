"""The benchmark's traffic paths: the same product replica behind an endpoint whose
Production splits 90/10 between two versions, and behind one whose inference table
captures every request. Measured beside plain routing in the same run (``bench``)."""

from __future__ import annotations

from pathlib import Path

SPLIT_MODEL = "iris-classifier-split"
CAPTURE_MODEL = "iris-classifier-capture"
# What capture may add to the front door's p50.
TARGET_CAPTURE_COST_MS = 0.1


def route_traffic_paths(
    user: object, model_dir: Path, address: tuple[str, int], pid: int, route
) -> None:
    """Write the rows of both endpoints (``route`` writes a plain READY version)."""
    from endpoints.models import (
        EndpointVersion,
        InferenceTable,
        Replica,
        ReplicaState,
        ServiceState,
        ServingEndpoint,
        TrafficSplit,
    )

    route(SPLIT_MODEL, user, model_dir, address, pid)
    endpoint = ServingEndpoint.objects.get(registered_model_name=SPLIT_MODEL)
    first = endpoint.versions.get(version="1")
    second = EndpointVersion.objects.create(
        endpoint=endpoint,
        version="2",
        registry_stage="Production",
        service_state=ServiceState.READY,
        service_config=first.service_config,
        model_path=str(model_dir),
    )
    Replica.objects.create(
        version=second,
        replica_id=f"bench-{SPLIT_MODEL}-2",
        host=address[0],
        port=address[1],
        pid=pid,
        state=ReplicaState.RUNNING,
    )
    TrafficSplit.objects.create(endpoint=endpoint, target="Production", weights={"1": 90, "2": 10})

    route(CAPTURE_MODEL, user, model_dir, address, pid)
    InferenceTable.objects.create(
        endpoint=ServingEndpoint.objects.get(registered_model_name=CAPTURE_MODEL),
        enabled=True,
        sample_rate=1.0,
    )


def traffic_targets(front) -> dict[str, dict]:
    return {
        "front door -> split 90/10": front(SPLIT_MODEL),
        "front door -> capture 100 %": front(CAPTURE_MODEL),
    }


def traffic_rows(runs: dict, plain) -> list[tuple[str, str, str, bool | None]]:
    """Rows of the targets table: the split's and capture's p50 against plain routing."""
    split = runs[("front door -> split 90/10", "sequential")]
    capture = runs[("front door -> capture 100 %", "sequential")]
    cost = capture.p50_ms - plain.p50_ms
    return [
        (
            "split 90/10 p50 (vs plain routing)",
            f"{split.p50_ms:.2f} ms ({split.p50_ms - plain.p50_ms:+.3f})",
            f"{plain.p50_ms:.2f} ms",
            None,
        ),
        (
            f"capture cost at p50 < {TARGET_CAPTURE_COST_MS:g} ms",
            f"{capture.p50_ms:.2f} ms ({cost:+.3f})",
            f"{plain.p50_ms:.2f} ms",
            cost < TARGET_CAPTURE_COST_MS,
        ),
    ]


def hot_path_costs(body: bytes, *, runs: int = 21, calls: int = 10_000) -> dict[str, float]:
    """What a split and capture add to one request on the event loop, in microseconds
    (the median of ``runs`` timings of ``calls`` calls): picking a version by weight, and
    sampling plus queueing a request for the writer. Measured in this process, so it is
    not drowned by the noise of a loaded machine the way a p50 difference is."""
    import statistics
    import time

    from endpoints.gateway.capture import Capture
    from endpoints.gateway.routing import Target
    from endpoints.gateway.split import build_split

    def target(version: str) -> Target:
        return Target(1, 1, "m", version, "SERVICE_STATE_READY", "", True, False, (("h", 1),))

    split = build_split({"1": 90, "2": 10}, {"1": target("1"), "2": target("2")})
    answer = b'{"predictions": [0]}'

    def pick() -> None:
        for _ in range(calls):
            split.pick()

    def offer() -> None:
        # An empty queue for each run: every call is kept, none is dropped for lack of room
        # (emptying it is the writer's job, not what a request pays).
        capture = Capture(writer=False)
        for _ in range(calls):
            capture.offer(
                1.0,
                endpoint="m",
                selector="Production",
                version="1",
                status=200,
                latency_ms=1.0,
                token_id=1,
                request=body,
                response=answer,
            )

    costs = {}
    for name, fn in (("split", pick), ("capture", offer)):
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            timings.append((time.perf_counter() - start) / calls * 1e6)
        costs[name] = statistics.median(timings)
    return costs


def hot_path_rows(costs: dict[str, float]) -> list[tuple[str, str, str, bool | None]]:
    return [
        ("split: picking a version, per request", f"{costs['split']:.2f} us", "-", None),
        (
            f"capture: sampling + queueing < {TARGET_CAPTURE_COST_MS * 1000:g} us",
            f"{costs['capture']:.2f} us",
            "-",
            costs["capture"] < TARGET_CAPTURE_COST_MS * 1000,
        ),
    ]
