"""Traffic splits in the routing snapshot: a stage's or an alias's requests shared between
versions by weight.

Built with the routing table (one query for every endpoint's splits); a request picks its
version with one call to ``random.random`` and a bisection over the cumulative weights,
no I/O. A version of a split that cannot take requests (not READY and no pointer on it,
or gone) is left out, and the others share its weight.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from endpoints.models import TrafficSplit


class Target(Protocol):
    """What a split needs of ``routing_table.Target`` (which module imports this one)."""

    version: str
    routable: bool
    replicas: tuple[Any, ...]


# {endpoint pk: {target: {version: weight}}}
SplitRows = dict[int, dict[str, dict[str, int]]]


@dataclass(frozen=True)
class Split:
    """The versions of one split with their cumulative weights."""

    targets: tuple[Target, ...]
    cumulative: tuple[float, ...]

    def pick(self, draw: float | None = None) -> Target:
        """A version by weight; ``draw`` in [0, 1) stands in for the random number."""
        point = (random.random() if draw is None else draw) * self.cumulative[-1]
        return self.targets[min(bisect_right(self.cumulative, point), len(self.targets) - 1)]

    @property
    def weights(self) -> dict[str, float]:
        """{version: share of requests}, for pages and tests."""
        total = self.cumulative[-1]
        previous = 0.0
        shares = {}
        for target, upto in zip(self.targets, self.cumulative, strict=True):
            shares[target.version] = (upto - previous) / total
            previous = upto
        return shares


def load_splits(endpoint_pks: Iterable[int]) -> SplitRows:
    rows: SplitRows = {}
    found = TrafficSplit.objects.filter(endpoint_id__in=list(endpoint_pks)).values_list(
        "endpoint_id", "target", "weights"
    )
    for endpoint_pk, target, weights in found:
        rows.setdefault(endpoint_pk, {})[target] = weights
    return rows


def build_splits(
    rows: Mapping[str, Mapping[str, int]], versions: Mapping[str, Target]
) -> dict[str, Split]:
    """{target: Split} of one endpoint's splits that have a version able to answer."""
    splits = {}
    for name, weights in rows.items():
        split = build_split(weights, versions)
        if split is not None:
            splits[name] = split
    return splits


def build_split(weights: Mapping[str, int], versions: Mapping[str, Target]) -> Split | None:
    chosen: list[Target] = []
    cumulative: list[float] = []
    total = 0.0
    for version, weight in sorted(weights.items(), key=lambda item: item[0]):
        target = versions.get(version)
        if target is None or weight <= 0 or not (target.routable or target.replicas):
            continue
        total += weight
        chosen.append(target)
        cumulative.append(total)
    if not chosen:
        return None
    return Split(tuple(chosen), tuple(cumulative))
