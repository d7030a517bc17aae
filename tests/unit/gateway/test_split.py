"""The gateway's traffic split: which versions a split keeps and how a draw picks one.
Plain values only (``routing_table.Target``), no database or Redis."""

from __future__ import annotations

from collections import Counter

import pytest

from endpoints.gateway.routing_table import Target
from endpoints.gateway.split import build_split, build_splits


def target(version: str, *, ready: bool = True, replicas: int = 1) -> Target:
    return Target(
        version_pk=int(version),
        endpoint_pk=1,
        model_name="m",
        version=version,
        service_state="SERVICE_STATE_READY" if ready else "SERVICE_STATE_PENDING",
        service_message="",
        routable=ready,
        scale_to_zero=False,
        replicas=tuple(("127.0.0.1", 20000 + i) for i in range(replicas)),
    )


VERSIONS = {"1": target("1"), "2": target("2"), "3": target("3", ready=False, replicas=0)}


def test_draws_are_shared_out_by_weight():
    split = build_split({"1": 90, "2": 10}, VERSIONS)
    picked = Counter(split.pick(draw=i / 1000).version for i in range(1000))
    assert picked == {"1": 900, "2": 100}
    assert split.weights == {"1": 0.9, "2": 0.1}


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_a_single_version_takes_every_draw(draw):
    assert build_split({"2": 100}, VERSIONS).pick(draw=draw).version == "2"


def test_versions_that_cannot_answer_share_their_weight_out():
    split = build_split({"1": 50, "3": 25, "9": 25}, VERSIONS)
    assert split.weights == {"1": 1.0}
    assert build_split({"3": 100}, VERSIONS) is None
    assert build_split({"1": 0, "2": 0}, VERSIONS) is None


def test_only_splits_with_an_answering_version_are_kept():
    splits = build_splits({"@a": {"1": 50, "2": 50}, "@b": {"3": 100}}, VERSIONS)
    assert set(splits) == {"@a"}


def test_random_picks_follow_the_weights():
    split = build_split({"1": 90, "2": 10}, VERSIONS)
    picked = Counter(split.pick().version for _ in range(20_000))
    assert 0.88 <= picked["1"] / 20_000 <= 0.92
