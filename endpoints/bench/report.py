"""The benchmarks' tables: measured figures, and targets with PASS/MISS."""

from __future__ import annotations

from collections.abc import Callable

from .load import Result

# (target, figure, baseline, passed: None when the row has no target)
Row = tuple[str, str, str, bool | None]


def print_results(say: Callable[[str], None], runs: dict[tuple[str, str], Result]) -> None:
    """One line per (path, client): latency percentiles, rate, errors and connections."""
    say(
        f"{'path':34} {'client':>18} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} "
        f"{'errors':>6} {'conns':>5}"
    )
    for (label, client), r in runs.items():
        say(
            f"{label:34} {client:>18} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:7.0f} "
            f"{r.errors:6} {r.connections:5}"
        )


def print_targets(say: Callable[[str], None], baseline: str, rows: list[Row]) -> None:
    say(f"{'target':58} {'figure':>18} {baseline:>14}  result")
    for label, figure, base, ok in rows:
        result = "-" if ok is None else "PASS" if ok else "MISS"
        say(f"{label:58} {figure:>18} {base:>14}  {result}")
