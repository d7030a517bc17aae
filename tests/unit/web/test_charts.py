"""The Metrics tab's charts as plain values: buckets added up into steps, lines broken where
values are missing, round axis labels."""

from __future__ import annotations

from endpoints.web import charts


def test_steps_add_buckets_up_and_carry_the_replica_count():
    raw = [
        (100, {"requests": 3, "errors": 1, "latency_ms_max": 5.0, "h:2": 3, "replicas": 2}),
        (110, {"requests": 1, "latency_ms_max": 9.0, "h:4": 1}),
        (150, {"requests": 2, "h:2": 2}),
    ]
    grouped = charts.steps(raw, start=100, end=190, step=30, replicas=1)
    assert [s for s, _ in grouped] == [100, 130, 160]
    first, second, third = (d for _, d in grouped)
    assert first["requests"] == 4 and first["errors"] == 1 and first["latency_ms_max"] == 9.0
    assert first["h:2"] == 3 and first["h:4"] == 1 and first["replicas"] == 2
    assert second["requests"] == 2 and second["replicas"] == 2
    assert third == {"replicas": 2}


def test_a_chart_breaks_its_line_where_values_are_missing():
    chart = charts.chart(
        "Latency",
        "latency",
        [0, 10, 20, 30, 40],
        [charts.Series("p50", "s1", [1, 2, None, 4, None])],
    )
    line = chart["lines"][0]
    assert len(line["segments"]) == 1 and len(line["segments"][0].split()) == 2
    assert len(line["dots"]) == 1  # the lone point at 30
    assert line["last"] == 4
    assert chart["y_labels"][-1]["text"] == "5"  # a round maximum above 4
    replicas = charts.chart(
        "Replicas", "replicas", [0, 10], [charts.Series("n", "s2", [1, 1])], integer=True
    )
    assert [label["text"] for label in replicas["y_labels"]] == ["0", "1"]
