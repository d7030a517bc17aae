"""Driving the UI in Debian's chromium through Playwright: how chromium is launched (the
``browser`` fixture of ``tests/browser/conftest.py``), logging in, opening a panel, and
screenshots (to ``tests/screenshots/``)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
# How long a page may take to show a version Ready (a replica's start included).
READY_TIMEOUT_MS = 240_000


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, base: str, username: str, password: str) -> None:
    page.goto(base + "/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Registered models")).to_be_visible()


def open_panel(page: Page, title: str) -> None:
    page.locator("#panel nav.tabs").get_by_role("link", name=title, exact=True).click()
    expect(
        page.locator("#panel nav.tabs").get_by_role("link", name=title, exact=True)
    ).to_have_attribute("aria-current", "page")
