"""The Metrics tab's charts and the Serving tab's own refresh, in a real browser (Debian
chromium through Playwright) against the running product: the front door, the Celery
worker and real replicas.

Real traffic (answers and 400s) goes through the front door; the Metrics tab then draws
it (a screenshot goes to docs/screenshots/). A replica process is then killed: the open
Serving tab shows the crash and the replacement by itself, without a reload.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import requests
from playwright.sync_api import Page, expect

from endpoints import services
from endpoints.dev.devstack import wait_for
from endpoints.models import Replica, ReplicaState, ServiceState, ServingEndpoint, StageAlias
from endpoints.telemetry import metrics
from tests.support import iris
from tests.support.browser import log_in, open_panel

MODEL = "iris-classifier"
BAD = {"foo": 1}
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"
READY_SECONDS = 240


def production_ready() -> bool:
    return StageAlias.objects.filter(
        endpoint__registered_model_name=MODEL,
        stage="Production",
        version__service_state=ServiceState.READY,
    ).exists()


def running_replica(version_name: str) -> Replica | None:
    return Replica.objects.filter(
        version__endpoint__registered_model_name=MODEL,
        version__version=version_name,
        state=ReplicaState.RUNNING,
    ).first()


def test_metrics_charts_after_traffic_and_the_tab_refreshing_itself(
    stack: str, owner, make_token, page: Page
):
    base = stack
    services.endpoint_enable(name=MODEL, user=owner)
    wait_for(production_ready, timeout=READY_SECONDS, what="Production ready")
    first = wait_for(
        lambda: running_replica("1"), timeout=READY_SECONDS, what="a running replica of v1"
    )
    token = make_token(owner)
    url = f"{base}/model-endpoint/{MODEL}/Production/invocations"
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(60):
        bad = i % 10 == 9
        response = requests.post(url, json=BAD if bad else iris.SPLIT, headers=headers, timeout=30)
        assert response.status_code == (400 if bad else 200), response.text
    version_pk = first.version_id

    def flushed() -> bool:
        now_ms = int(time.time() * 1000)
        points = metrics.series(version_pk, now_ms - 600_000, now_ms + 10_000)
        return sum(p["requests"] for p in points) >= 60

    wait_for(flushed, timeout=30, what="the requests in the metric buckets")

    log_in(page, base, "alice", "pw-alice-123")
    page.goto(f"{base}/models/{MODEL}/serving/?version=1&tab=metrics")
    charts = page.locator("#metrics")
    expect(charts.get_by_role("link", name="15 min")).to_have_attribute("aria-current", "page")
    for key in ("requests", "latency", "errors", "replicas"):
        chart = page.get_by_test_id(f"chart-{key}")
        expect(chart.locator("polyline, circle").first).to_be_attached()
        expect(chart).not_to_contain_text("No data in this window")
    expect(page.get_by_test_id("chart-latency")).to_contain_text("p99")
    expect(charts).to_contain_text("errors (10.0%)")
    DOCS_SCREENSHOTS.mkdir(exist_ok=True)
    charts.screenshot(path=str(DOCS_SCREENSHOTS / "12-metrics-charts.png"))

    # Another window: the same traffic, downsampled.
    charts.get_by_role("link", name="1 hour").click()
    expect(page.locator("#metrics").get_by_role("link", name="1 hour")).to_have_attribute(
        "aria-current", "page"
    )
    expect(page.get_by_test_id("chart-requests").locator("polyline, circle").first).to_be_attached()

    # The replica crashes while the Call tab is open: the page shows it by itself.
    open_panel(page, "Call the model")
    page.evaluate("window.__notReloaded = true")
    detail = page.locator("#version-detail")
    expect(detail).to_contain_text(first.replica_id)
    os.kill(first.pid, signal.SIGKILL)
    crashed = detail.locator("tr", has=page.locator("code", has_text=first.replica_id))
    expect(crashed).not_to_contain_text("Running", timeout=90_000)
    expect(crashed).to_contain_text(re.compile("Error|Terminat|Pending"))
    replacement = wait_for(
        lambda: (r := running_replica("1")) and r.replica_id != first.replica_id and r,
        timeout=READY_SECONDS,
        what="a replacement replica",
    )
    expect(detail).to_contain_text(replacement.replica_id, timeout=60_000)
    assert page.evaluate("window.__notReloaded") is True
    assert ServingEndpoint.objects.get(registered_model_name=MODEL).enabled
