"""The scoring benchmark's traffic paths: the same model behind an endpoint whose
Production splits 90/10 between two versions, and behind one whose inference table
captures every request, both set up through the product's services (the ones its REST
API calls) and measured beside plain routing in the same run."""

from __future__ import annotations

from .common import register_copy
from .load import Result, send_once

SPLIT_MODEL = "iris-classifier-split"
CAPTURE_MODEL = "iris-classifier-capture"
MODELS = (SPLIT_MODEL, CAPTURE_MODEL)
SPLIT, CAPTURE = "front door -> split 90/10", "front door -> capture 100 %"
SPLIT_WEIGHTS = {"1": 90, "2": 10}
# What capture may add to the front door's p50.
TARGET_CAPTURE_COST_MS = 0.1

Row = tuple[str, str, str, bool | None]


def register() -> None:
    """Both models in the registry, made of the demo model's artifacts: the split's with
    a second version in Staging (the loop serves it, so it is READY to take a share)."""
    register_copy(SPLIT_MODEL, ("Production", "Staging"))
    register_copy(CAPTURE_MODEL, ("Production",))


def configure(user: object) -> None:
    """The split and the inference table, once both endpoints are READY."""
    from endpoints import services

    services.traffic_split_set(
        name=SPLIT_MODEL, target="Production", weights=SPLIT_WEIGHTS, user=user
    )
    services.inference_table_update(name=CAPTURE_MODEL, enabled=True, sample_rate=1.0, user=user)


def targets(front) -> dict[str, dict]:
    """``front(model)`` is the front door's target for a model's Production."""
    return {SPLIT: front(SPLIT_MODEL), CAPTURE: front(CAPTURE_MODEL)}


def answered_by_second_version(target: dict) -> bool:
    """Whether one request to the split was answered by version 2 (the gateways follow the
    split once they have rebuilt their routing)."""
    status, headers, _ = send_once(target)
    return status == 200 and headers.get("x-serving-version") == "2"


def rows(runs: dict[tuple[str, str], Result], plain: Result, client: str) -> list[Row]:
    """Rows of the targets table: the split's and capture's p50 against plain routing,
    all from ``client``."""
    split, capture = runs[(SPLIT, client)], runs[(CAPTURE, client)]
    cost = capture.p50_ms - plain.p50_ms
    return [
        (
            f"split 90/10 p50 (vs plain routing), {client}",
            f"{split.p50_ms:.2f} ms ({split.p50_ms - plain.p50_ms:+.3f})",
            f"{plain.p50_ms:.2f} ms",
            None,
        ),
        (
            f"capture cost at p50 < {TARGET_CAPTURE_COST_MS:g} ms, {client}",
            f"{capture.p50_ms:.2f} ms ({cost:+.3f})",
            f"{plain.p50_ms:.2f} ms",
            cost < TARGET_CAPTURE_COST_MS,
        ),
    ]


def captured_rows() -> list[Row]:
    """What the capture endpoint's inference table holds so far, and what it left out."""
    from endpoints.telemetry import inference_tables

    written, dropped = (
        inference_tables.count_rows(CAPTURE_MODEL),
        inference_tables.dropped(CAPTURE_MODEL),
    )
    return [("capture: rows written / left out so far", f"{written} / {dropped}", "-", None)]


def hot_path_costs(body: bytes, *, runs: int = 21, calls: int = 10_000) -> dict[str, float]:
    """What a split and capture add to one request on the event loop, in microseconds
    (the median of ``runs`` timings of ``calls`` calls): picking a version by weight, and
    sampling plus queueing a request for the writer. Measured in this process, so it is
    not drowned by the noise of a loaded machine the way a p50 difference is."""
    import statistics
    import time

    from endpoints.gateway.capture import Capture
    from endpoints.gateway.routing_table import Target
    from endpoints.gateway.split import build_split

    def target(version: str) -> Target:
        return Target(1, 1, "m", version, "SERVICE_STATE_READY", "", True, False, (("h", 1),))

    split = build_split(SPLIT_WEIGHTS, {"1": target("1"), "2": target("2")})
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


def hot_path_rows(costs: dict[str, float]) -> list[Row]:
    return [
        ("split: picking a version, per request", f"{costs['split']:.2f} us", "-", None),
        (
            f"capture: sampling + queueing < {TARGET_CAPTURE_COST_MS * 1000:g} us",
            f"{costs['capture']:.2f} us",
            "-",
            costs["capture"] < TARGET_CAPTURE_COST_MS * 1000,
        ),
    ]
