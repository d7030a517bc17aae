"""The Serving tab's Traffic and Inference table panels in a real browser against the
running product: an alias URL beside the stage URLs, pointing an alias from the panel, a
90/10 split saved from its controls (and the Metrics tab showing both versions), and the
captured requests of the inference table. Screenshots go to tests/screenshots/."""

from __future__ import annotations

import re
import uuid

import requests
from playwright.sync_api import Page, expect

from endpoints import registry, services
from endpoints.dev.devstack import wait_for
from endpoints.models import StageAlias
from endpoints.telemetry import inference_tables
from tests.support.browser import READY_TIMEOUT_MS, log_in, open_panel, shot
from tests.support.models import constant_model, register


def score(base: str, token: str, name: str, selector: str, count: int) -> None:
    with requests.Session() as session:
        for i in range(count):
            response = session.post(
                f"{base}/model-endpoint/{name}/{selector}/invocations",
                json={"dataframe_records": [{"petal length (cm)": 1.4 + i / 10}]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert response.status_code == 200, response.text


def test_aliases_a_split_and_the_inference_table(stack: str, owner, make_token, page: Page):
    name = f"churn-{uuid.uuid4().hex[:6]}"
    v1 = register(name, constant_model("stay"), "Production")
    v2 = register(name, constant_model("leave"))
    registry.client().set_registered_model_alias(name, "champion", v1)
    services.endpoint_enable(name=name, user=owner)
    token = make_token(owner)
    log_in(page, stack, "alice", "pw-alice-123")
    page.goto(f"{stack}/models/{name}/serving/")
    expect(page.get_by_test_id("endpoint-status")).to_contain_text(
        "Ready", timeout=READY_TIMEOUT_MS
    )

    # Alias URLs beside the stage URLs; versions tagged with their aliases.
    page.reload()
    urls = page.locator("#model-urls")
    expect(urls).to_contain_text(f"{stack}/model-endpoint/{name}/Production/invocations")
    expect(urls).to_contain_text(f"{stack}/model-endpoint/{name}/@champion/invocations")
    expect(page.get_by_test_id(f"version-tab-{v1}")).to_contain_text("@champion")

    # Point @challenger at version 2 from the Traffic panel; its URL follows once ready.
    open_panel(page, "Traffic")
    form = page.get_by_test_id("alias-form")
    form.get_by_label("Alias", exact=True).fill("challenger")
    form.get_by_label("Version").select_option(v2)
    form.get_by_role("button", name="Set alias").click()
    expect(
        page.get_by_role("status").filter(has_text="@challenger now points at version")
    ).to_be_visible()
    wait_for(
        lambda: StageAlias.objects.filter(
            endpoint__registered_model_name=name, stage="@challenger"
        ).exists(),
        timeout=120,
        what="@challenger to serve",
    )
    page.reload()
    expect(page.get_by_test_id("alias-challenger")).to_contain_text(f"Version {v2}")
    expect(page.locator("#model-urls")).to_contain_text("@challenger/invocations")
    shot(page, "12-traffic-aliases")

    # Split @champion 90/10 between the two versions.
    split = page.get_by_test_id("split-alias-champion")
    split.get_by_test_id(f"weight-alias-champion-{v1}").fill("90")
    split.get_by_test_id(f"weight-alias-champion-{v2}").fill("10")
    split.get_by_role("button", name="Save split").click()
    expect(
        page.get_by_role("status").filter(has_text="@champion traffic split saved")
    ).to_be_visible()
    split = page.get_by_test_id("split-alias-champion")
    expect(split).to_contain_text(re.compile(rf"v{v1}\s*90 %"))
    expect(split).to_contain_text(re.compile(rf"v{v2}\s*10 %"))
    expect(split.get_by_role("button", name=f"Promote v{v2}")).to_be_visible()
    expect(split.get_by_role("button", name=f"Roll back to v{v1}")).to_be_visible()
    shot(page, "13-traffic-split")

    # The inference table: capture every request, then see them.
    open_panel(page, "Inference table")
    form = page.get_by_test_id("inference-form")
    form.get_by_label("Capture requests").check()
    form.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("inference-state")).to_contain_text("On, capturing 100")
    score(stack, token, name, "@champion", 30)
    wait_for(lambda: inference_tables.count_rows(name) >= 30, timeout=60, what="30 captured rows")
    page.reload()
    rows = page.get_by_test_id("inference-rows")
    expect(rows).to_contain_text("@champion")
    expect(rows).to_contain_text("predictions")
    expect(page.get_by_role("link", name=re.compile("Download"))).to_be_visible()
    shot(page, "14-inference-table")

    # The Metrics tab shows the split's versions side by side.
    open_panel(page, "Metrics")
    expect(page.get_by_test_id("split-metrics")).to_contain_text(f"Version {v2}")
    services.endpoint_disable(name=name, user=owner)
