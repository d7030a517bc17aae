"""The Metrics tab's charts, drawn on the server as SVG (no JavaScript, no library).

The data is the version's 10-second metric buckets in Redis (``endpoints.telemetry.metrics``). A
window longer than 15 minutes is downsampled: its buckets are added up into steps (the
latency histograms too, so each step's percentiles are exact for that step), keeping
every chart at about 90 to 120 points. The replica count is recorded by each reconcile
pass; a step without a record carries the last count on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from endpoints.telemetry import metrics

# Window name → (seconds shown, seconds per point).
WINDOWS = {
    "15m": (15 * 60, 10),
    "1h": (3600, 30),
    "6h": (6 * 3600, 180),
    "24h": (24 * 3600, 720),
}
WINDOW_LABELS = {"15m": "15 min", "1h": "1 hour", "6h": "6 hours", "24h": "24 hours"}
DEFAULT_WINDOW = "15m"

WIDTH, HEIGHT = 640, 150
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 22
MAX_FIELDS = ("latency_ms_max",)


@dataclass(frozen=True)
class Series:
    name: str
    css: str
    values: list[float | None]


def steps(
    raw: list[tuple[int, dict[str, float]]],
    *,
    start: int,
    end: int,
    step: int,
    replicas: float | None = None,
) -> list[tuple[int, dict[str, float]]]:
    """The buckets added up per ``step`` seconds from ``start`` to ``end`` (every step,
    empty ones as ``{}``); the replica count is the step's last record, carried on
    (``replicas``: the count recorded before ``start``)."""
    grouped: dict[int, dict[str, float]] = {}
    for b, data in raw:
        slot = grouped.setdefault(start + (b - start) // step * step, {})
        for key, value in data.items():
            if key == "replicas":
                slot[key] = value
            elif key in MAX_FIELDS:
                slot[key] = max(slot.get(key, 0.0), value)
            else:
                slot[key] = slot.get(key, 0.0) + value
    out = []
    for s in range(start, end, step):
        data = dict(grouped.get(s, {}))
        if "replicas" in data:
            replicas = data["replicas"]
        elif replicas is not None:
            data["replicas"] = replicas
        out.append((s, data))
    return out


def metrics_charts(version_pk: int, window: str, *, now: float | None = None) -> dict[str, Any]:
    """The Metrics tab's context: the window, the summary figures and four charts."""
    window = window if window in WINDOWS else DEFAULT_WINDOW
    seconds, step = WINDOWS[window]
    now = time.time() if now is None else now
    end = int(now) // step * step + step
    start = end - seconds
    # One step further back: a replica count recorded just before the window carries on.
    raw = metrics.buckets(version_pk, (start - step) * 1000, end * 1000)
    before = [d["replicas"] for b, d in raw if b < start and "replicas" in d]
    grouped = steps(
        [(b, d) for b, d in raw if b >= start],
        start=start,
        end=end,
        step=step,
        replicas=before[-1] if before else None,
    )
    points = [metrics.point(s, data, seconds=step) for s, data in grouped]
    times = [s for s, _ in grouped]
    served = [p for p in points if p["requests"]]
    requests = sum(p["requests"] for p in points)
    errors = sum(p["errors"] for p in points)
    window_data = [d for _, d in grouped]
    charts = [
        chart(
            "Requests per second",
            "requests",
            times,
            [Series("requests/s", "s1", [p["requests_per_second"] for p in points])],
        ),
        chart(
            "Latency (ms)",
            "latency",
            times,
            [
                Series("p50", "s1", [p["latency_ms_p50"] for p in points]),
                Series("p95", "s2", [p["latency_ms_p95"] for p in points]),
                Series("p99", "s3", [p["latency_ms_p99"] for p in points]),
            ],
        ),
        chart(
            "Error rate (%)",
            "errors",
            times,
            [
                Series(
                    "errors",
                    "s4",
                    [round(100 * p["error_rate"], 2) if p["requests"] else None for p in points],
                )
            ],
        ),
        chart(
            "Replicas",
            "replicas",
            times,
            [Series("replicas", "s2", [p["replicas"] for p in points])],
            integer=True,
        ),
    ]
    replicas = [p["replicas"] for p in points if p["replicas"] is not None]
    return {
        "window": window,
        "windows": list(WINDOW_LABELS.items()),
        "window_label": WINDOW_LABELS[window],
        "step_seconds": step,
        "charts": charts,
        "has_traffic": bool(served),
        "summary": {
            "requests": requests,
            "requests_per_second": round(requests / seconds, 2),
            "errors": errors,
            "error_rate": round(100 * errors / requests, 1) if requests else 0,
            **metrics.window_percentiles(window_data),
            "replicas": replicas[-1] if replicas else None,
        },
    }


def chart(
    title: str, key: str, times: list[int], series: list[Series], *, integer: bool = False
) -> dict[str, Any]:
    """One chart's geometry: polylines (broken where a value is missing), axis labels."""
    values = [v for s in series for v in s.values if v is not None]
    top = _nice(max(values, default=0) or 1, integer)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = max(len(times) - 1, 1)

    def xy(i: int, v: float) -> tuple[str, str]:
        return f"{LEFT + plot_w * i / count:.1f}", f"{TOP + plot_h * (1 - v / top):.1f}"

    lines = []
    for s in series:
        segments: list[list[tuple[str, str]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                if segments[-1]:
                    segments.append([])
                continue
            segments[-1].append(xy(i, v))
        lines.append(
            {
                "name": s.name,
                "css": s.css,
                # A lone point (no neighbour to draw a line to) is drawn as a dot.
                "segments": [
                    " ".join(f"{x},{y}" for x, y in seg) for seg in segments if len(seg) > 1
                ],
                "dots": [{"x": seg[0][0], "y": seg[0][1]} for seg in segments if len(seg) == 1],
                "last": next((v for v in reversed(s.values) if v is not None), None),
            }
        )
    ticks = [0, len(times) // 2, len(times) - 1] if times else []
    return {
        "title": title,
        "key": key,
        "width": WIDTH,
        "height": HEIGHT,
        "lines": lines,
        "has_data": bool(values),
        "y_labels": [
            {"y": f"{TOP + plot_h * (1 - f):.1f}", "text": _fmt(top * f, integer)}
            # A count axis labels whole numbers only.
            for f in (0, 0.5, 1)
            if not (integer and f == 0.5 and top % 2)
        ],
        "x_labels": [
            {
                "x": f"{LEFT + plot_w * i / count:.1f}",
                "text": _clock(times[i]),
                "anchor": "start" if i == 0 else "end" if i == len(times) - 1 else "middle",
            }
            for i in ticks
        ],
        "axis": {
            "left": LEFT,
            "right": WIDTH - RIGHT,
            "label_x": LEFT - 6,
            "label_y": HEIGHT - 6,
            "middle_x": LEFT + plot_w // 2,
            "middle_y": TOP + plot_h // 2,
        },
    }


def _nice(value: float, integer: bool) -> float:
    """A round axis maximum at or above ``value``: 1, 2 or 5 times a power of ten."""
    if integer:
        return max(1, math.ceil(value))
    magnitude = 10 ** math.floor(math.log10(value))
    return next(f * magnitude for f in (1, 2, 5, 10) if f * magnitude >= value * (1 - 1e-9))


def _fmt(value: float, integer: bool) -> str:
    if integer or value == int(value):
        return str(round(value))
    return f"{value:.3g}"


def _clock(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.get_current_timezone()).strftime("%H:%M")
