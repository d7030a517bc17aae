"""The Serving tab's **Send Request** as the page does it, for tests on the real stack
without a browser: log in through the login page, read the request form from the Serving
tab, and send the box as the page's script does (to the URL the form names, with the
session and the page's CSRF token) or as the form does without JavaScript."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class SendForm:
    """What the Serving tab's request form says: where to send, and its CSRF token."""

    score_path: str  # where the script posts the box
    action: str  # where the form posts without JavaScript
    csrf_token: str


class UiClient:
    """A user signed in to the web UI through its login page."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        with requests.Session() as session:
            session.get(f"{base}/login/", timeout=30)
            answer = session.post(
                f"{base}/login/",
                data={
                    "username": username,
                    "password": password,
                    "csrfmiddlewaretoken": session.cookies["csrftoken"],
                },
                timeout=30,
            )
            assert answer.ok and "sessionid" in session.cookies, answer.text[-500:]
            # A plain dict: each call may run in a thread of its own.
            self.cookies = session.cookies.get_dict()

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base + path, cookies=self.cookies, timeout=30, **kwargs)

    def form(self, name: str, version: str) -> SendForm:
        page = self.get(f"/models/{name}/serving/?version={version}").text
        start = page.index('<form id="call-form"')
        form = page[start : page.index("</form>", start)]

        def attribute(pattern: str) -> str:
            found = re.search(pattern, form)
            assert found, f"no {pattern!r} in the request form: {form[:300]}"
            return found.group(1)

        return SendForm(
            score_path=attribute(r'data-score="([^"]+)"'),
            action=attribute(r'action="([^"]+)"'),
            csrf_token=attribute(r'name="csrfmiddlewaretoken" value="([^"]+)"'),
        )

    def send(self, form: SendForm, body: dict, **headers: str) -> requests.Response:
        """What the page's script sends (``headers`` override its own)."""
        return requests.post(
            self.base + form.score_path,
            data=json.dumps(body),
            headers={
                "Content-Type": "application/json",
                "X-CSRFToken": form.csrf_token,
                "Origin": self.base,
                **headers,
            },
            cookies=self.cookies,
            timeout=90,
        )

    def send_without_javascript(
        self, form: SendForm, version: str, body: dict
    ) -> requests.Response:
        """What the form posts when the browser runs no script."""
        return requests.post(
            self.base + form.action,
            data={
                "csrfmiddlewaretoken": form.csrf_token,
                "version": version,
                "body": json.dumps(body),
            },
            headers={"Referer": self.base + form.action},
            cookies=self.cookies,
            timeout=90,
        )
