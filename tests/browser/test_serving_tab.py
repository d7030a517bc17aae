"""The Serving tab in a real browser (Debian chromium through Playwright) against the
running product: the web server, the Celery worker and real model server replicas.

One walk through what a data scientist does: log in, enable serving for iris-classifier,
wait for Ready, load the example and score it (the page posts it to the scoring URL: a
progress note while it is on its way, then the answer or the error), change a stage's
compute settings, read logs, metrics and events, move a version with the stage drop-down,
disable serving.
Screenshots of the main states go to tests/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from endpoints import registry
from tests.support.browser import READY_TIMEOUT_MS, log_in, open_panel, shot
from tests.support.stack import wait_for

MODEL = "iris-classifier"


@pytest.fixture
def restore_stages() -> Iterator[None]:
    """Other tests expect the demo model's stages as seeded: v1 Production, v2 Staging."""
    yield
    for version, stage in (("1", "Production"), ("2", "Staging")):
        if registry.get_version(MODEL, version).stage != stage:
            registry.transition_stage(MODEL, version, stage)


def test_serving_tab_from_enable_to_disable(stack: str, owner, page: Page, restore_stages):
    base = stack
    log_in(page, base, "alice", "pw-alice-123")

    # Models list: every registered model with its versions and serving badge.
    row = page.locator("tr", has=page.get_by_role("link", name=MODEL, exact=True))
    expect(row).to_contain_text("v1 · Production")
    expect(row).to_contain_text("v2 · Staging")
    expect(row.get_by_test_id("serving-badge")).to_have_text("Off")
    shot(page, "01-models-list")

    # The search box narrows the list as one types (htmx swaps the results, the URL follows).
    search = page.get_by_role("searchbox", name="Search models by name")
    search.fill("no-such-model-anywhere")
    expect(page.get_by_text("No model has “no-such-model-anywhere” in its name.")).to_be_visible()
    expect(page).to_have_url(re.compile(r"q=no-such-model-anywhere"))
    search.fill("IRIS-CLASS")
    row = page.locator("tr", has=page.get_by_role("link", name=MODEL, exact=True))
    expect(row).to_contain_text("v1 · Production")
    expect(page.get_by_role("link", name="ElasticNet", exact=True)).to_have_count(0)
    expect(page).to_have_url(re.compile(r"q=IRIS-CLASS"))

    # Serving tab while off.
    row.get_by_role("link", name=MODEL, exact=True).click()
    page.get_by_role("link", name="Serving", exact=True).click()
    enable = page.get_by_role("button", name="Enable Serverless Real-Time Inference")
    expect(enable).to_be_visible()
    shot(page, "02-serving-off")

    # Enable: Pending, then Ready through the status poll.
    enable.click()
    status = page.get_by_test_id("endpoint-status")
    expect(status).to_contain_text(re.compile("Pending|Ready"))
    expect(page.locator("#sidebar")).to_be_visible()
    shot(page, "03-serving-pending")
    expect(status).to_contain_text("Ready", timeout=READY_TIMEOUT_MS)
    send = page.get_by_role("button", name="Send Request")
    expect(send).to_be_enabled(timeout=READY_TIMEOUT_MS)

    # Versions on the left, tagged with their stages; model URLs at the top.
    expect(page.get_by_test_id("version-tab-1")).to_contain_text("Production")
    expect(page.get_by_test_id("version-tab-2")).to_contain_text("Staging")
    expect(page.get_by_test_id("version-tab-2")).to_contain_text("Ready", timeout=READY_TIMEOUT_MS)
    urls = page.locator("#model-urls")
    expect(urls).to_contain_text(f"{base}/model-endpoint/{MODEL}/Production/invocations")
    expect(urls).to_contain_text(f"{base}/model/{MODEL}/1/invocations")

    # Call the model: Show Example loads the logged example, Send Request scores it. The
    # page posts it to the version's scoring URL (the front door answers it there, no page
    # thread waits); while it is on its way the page says so.
    page.get_by_test_id("version-tab-1").click()
    page.get_by_role("link", name="Show Example").click()
    expect(page.locator("#request-body")).to_have_value(re.compile("dataframe_records"))
    scoring = f"{base}/model/{MODEL}/1/invocations"
    held: list = []
    page.route(scoring, lambda route: held.append(route))
    page.get_by_role("button", name="Send Request").click()
    # Each round trip to the browser lets Playwright hand the held request to the handler.
    wait_for(lambda: page.evaluate("true") and held, timeout=30, what="the request held")
    expect(page.get_by_test_id("sending")).to_be_visible()
    with page.expect_response(scoring) as sent:
        held[0].continue_()
    page.unroute(scoring)
    assert sent.value.status == 200
    assert sent.value.request.headers["x-csrftoken"]
    response = page.get_by_test_id("response")
    expect(response).to_contain_text("Status 200")
    expect(response).to_contain_text('"predictions"')
    expect(response).to_contain_text(re.compile(r"\d+\.\d ms"))
    expect(page.get_by_test_id("sending")).to_have_count(0)
    shot(page, "04-serving-ready-response")
    # An error answer is shown the same way, with its status.
    page.locator("#request-body").fill('{"no_such_format": []}')
    page.get_by_role("button", name="Send Request").click()
    expect(response).to_contain_text("Status 400")
    expect(response).to_contain_text("error_code")
    expect(response).to_have_class(re.compile("error"))
    page.set_viewport_size({"width": 400, "height": 860})
    expect(page.locator("#sidebar")).to_be_visible()
    shot(page, "04b-serving-narrow")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("tab", name="Curl").click()
    expect(page.locator("#curl-snippet")).to_contain_text(
        f'curl -u token:$TOKEN -X POST -H "Content-Type: application/json" -d@data.json '
        f"{base}/model/{MODEL}/1/invocations"
    )
    page.get_by_role("tab", name="Python").click()
    expect(page.locator("#python-snippet")).to_contain_text("def score_model(dataset):")
    expect(page.locator("#request-body")).to_be_hidden()

    # Compute Settings: Staging to Medium with scale to zero, less memory per replica and
    # at most 3 replicas; the rollout state shows.
    open_panel(page, "Compute Settings")
    staging = page.get_by_test_id("compute-staging")
    staging.get_by_role("radio", name=re.compile("Medium")).check()
    staging.get_by_label("Scale to zero").check()
    staging.get_by_text("Limits per replica").click()
    expect(staging.get_by_test_id("memory_mb-staging")).to_have_attribute("placeholder", "4096")
    staging.get_by_test_id("memory_mb-staging").fill("6144")
    staging.get_by_text("Autoscaling", exact=True).click()
    staging.get_by_test_id("max_replicas-staging").fill("3")
    staging.get_by_role("button", name="Save Staging").click()
    expect(
        page.get_by_role("status").filter(has_text="Staging compute settings saved")
    ).to_be_visible()
    staging = page.get_by_test_id("compute-staging")
    expect(staging).to_contain_text(
        "Current: Medium, scale to zero, 6144 MiB memory, at most 3 replicas"
    )
    expect(staging.get_by_role("radio", name=re.compile("Medium"))).to_be_checked()
    expect(staging.get_by_test_id("memory_mb-staging")).to_have_value("6144")
    expect(staging.get_by_test_id("max_replicas-staging")).to_have_value("3")
    expect(staging.get_by_test_id("rollout-staging")).to_contain_text(
        re.compile("Update queued|Updating|Up to date")
    )
    shot(page, "05-compute-settings")
    # The status poll refreshes the rollout state until the worker has applied it.
    expect(page.get_by_test_id("rollout-staging")).to_contain_text(
        "Up to date", timeout=READY_TIMEOUT_MS
    )

    # Logs: all replicas merged, one tab per replica, build logs.
    page.get_by_test_id("version-tab-1").click()
    open_panel(page, "Logs")
    log_text = page.get_by_test_id("log-text")
    expect(log_text).to_contain_text(re.compile(r"\[v1-[0-9a-f]+\] "))
    expect(page.get_by_role("link", name="All Replicas")).to_have_attribute("aria-current", "page")
    shot(page, "06-logs")
    page.get_by_role("link", name="Build Logs").click()
    expect(page.get_by_role("link", name="Build Logs")).to_have_attribute("aria-current", "page")

    # Metrics and Model Events.
    open_panel(page, "Metrics")
    expect(page.locator("#metrics")).to_contain_text("requests/s")
    open_panel(page, "Model Events")
    events = page.locator("#events")
    expect(events).to_contain_text("Serving enabled by alice@example.com.")
    expect(events).to_contain_text("Staging compute config set to Medium with scale to zero")
    shot(page, "07-events")

    # Details tab: move version 2 to Production with the stage drop-down, and back.
    page.get_by_role("link", name="Details", exact=True).click()
    version_2 = page.locator("#version-2")
    version_2.get_by_label("Stage of version 2").select_option("Production")
    version_2.get_by_role("button", name="Transition").click()
    expect(
        page.get_by_role("status").filter(has_text="Version 2 is now in Production.")
    ).to_be_visible()
    expect(page.get_by_test_id("stage-2")).to_have_text("Production")
    shot(page, "08-details-transition")
    assert registry.get_version(MODEL, "2").stage == "Production"
    version_2 = page.locator("#version-2")
    version_2.get_by_label("Stage of version 2").select_option("Staging")
    version_2.get_by_role("button", name="Transition").click()
    expect(page.get_by_test_id("stage-2")).to_have_text("Staging")

    # Disable, after the confirmation dialog.
    page.get_by_role("link", name="Serving", exact=True).click()
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Disable Serving").click()
    expect(page.get_by_role("button", name="Enable Serverless Real-Time Inference")).to_be_visible()
    assert dialogs and dialogs[0].startswith(f"Disable serving for {MODEL}?")
    expect(page.get_by_role("status").filter(has_text="Serving is disabled")).to_be_visible()
    shot(page, "09-serving-disabled")


def test_tokens_page_shows_a_new_token_once_and_revokes_it(stack: str, member, page: Page):
    log_in(page, stack, "bob", "pw-bob-123")
    page.get_by_role("link", name="Access tokens").click()
    expect(page.get_by_text("No tokens yet.")).to_be_visible()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    plaintext = page.locator("#new-token").inner_text()
    assert plaintext.startswith("sui_")
    row = page.locator("tr", has_text="laptop")
    expect(row).to_contain_text(plaintext[:12] + "…")
    shot(page, "10-tokens")

    page.goto(stack + "/tokens/")
    expect(page.locator("#new-token")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="laptop").get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("No tokens yet.")).to_be_visible()


def test_admin_creates_a_service_principal_and_its_token(stack: str, admin_user, page: Page):
    log_in(page, stack, "root", "pw-root-123")
    page.get_by_role("link", name="Service principals").click()
    expect(page.get_by_text("No service principals yet.")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("nightly-scoring")
    page.get_by_label("Display name").fill("Nightly scoring job")
    page.get_by_role("button", name="Create", exact=True).click()
    row = page.locator("tr", has_text="nightly-scoring")
    expect(row).to_contain_text("Nightly scoring job")
    row.get_by_placeholder("token name").fill("airflow")
    row.get_by_role("button", name="Create token").click()
    expect(page.get_by_test_id("new-token")).to_contain_text(
        "Token created for Nightly scoring job"
    )
    plaintext = page.locator("#new-token").inner_text()
    expect(page.locator("tr", has_text="nightly-scoring")).to_contain_text(plaintext[:12] + "…")
    shot(page, "11-service-principals")
