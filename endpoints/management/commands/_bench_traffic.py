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
