"""Where Serving UI is, how to authenticate, and one HTTP call with its retries and errors.

The target is ``serving-ui`` (the address from ``SERVING_UI_URL``) or ``serving-ui:/<url>``;
the token comes from ``SERVING_UI_TOKEN``. A 429 or 503 (a full queue, a version waking
from zero) is retried after the ``Retry-After`` the product sends; any other error becomes a
``ServingUIError`` whose message says what to fix.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from .errors import ServingUIError

TARGET = "serving-ui"
DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/2.0/preview/mlflow/endpoints-v2/"
RETRY_STATUSES = (429, 503)
# Longest single wait a Retry-After may ask for; a longer one is capped, not obeyed.
MAX_RETRY_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    chunk_rows: int = 256
    max_retries: int = 5
    timeout: float = 60.0


def _env_int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ServingUIError(
            f"{name} must be a whole number of at least {minimum}, not {raw!r}.",
            "INVALID_PARAMETER_VALUE",
        )
    return value


def url_from_target(target_uri: str, environ: Mapping[str, str]) -> str:
    """``serving-ui:/http://host:8000`` (or ``serving-ui://host:8000``) names the address;
    a bare ``serving-ui`` takes it from SERVING_UI_URL."""
    rest = target_uri.strip()
    if rest.startswith(TARGET):
        rest = rest[len(TARGET) :].removeprefix(":")
    rest = "http:" + rest if rest.startswith("//") else rest.lstrip("/")
    url = rest or environ.get("SERVING_UI_URL", "").strip() or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def settings_for(target_uri: str, environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    return Settings(
        url=url_from_target(target_uri, env),
        token=env.get("SERVING_UI_TOKEN", "").strip(),
        chunk_rows=_env_int(env, "SERVING_UI_CHUNK_ROWS", 256, 1),
        max_retries=_env_int(env, "SERVING_UI_MAX_RETRIES", 5, 0),
        timeout=float(_env_int(env, "SERVING_UI_TIMEOUT", 60, 1)),
    )


def retry_after_seconds(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); 1 if absent."""
    if not value:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_WAIT_SECONDS)


class Connection:
    """One Serving UI: API calls and scoring requests over a keep-alive session."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self._sleep = sleep
        self._session = requests.Session()

    def api(self, method: str, call: str, **args: Any) -> dict[str, Any]:
        """An endpoints-v2 (or other ``/api/…``) call: query parameters for GET, else JSON."""
        path = call if call.startswith("/") else API + call
        if method == "GET":
            return self._json(self.send(method, path, params=args))
        body = json.dumps(args).encode()
        return self._json(self.send(method, path, data=body))

    def invoke(self, name: str, route: str, body: bytes) -> dict[str, Any]:
        """A scoring request to ``/model-endpoint/<name>/<stage|version>/invocations``."""
        return self._json(self.send("POST", f"/model-endpoint/{name}/{route}/invocations", body))

    def send(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        params: dict[str, Any] | None = None,
    ) -> requests.Response:
        """The answer to one request, after waiting out up to ``max_retries`` 429/503s."""
        if not self.settings.token:
            raise ServingUIError(
                "No token: set SERVING_UI_TOKEN to a Serving UI access token "
                "(the Tokens page, or `manage.py create_token`).",
                "UNAUTHENTICATED",
            )
        headers = {
            "Authorization": f"Bearer {self.settings.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        url = self.settings.url + path
        for attempt in range(self.settings.max_retries + 1):
            response = self._request(method, url, headers, data, params)
            if response.status_code not in RETRY_STATUSES or attempt == self.settings.max_retries:
                break
            self._sleep(retry_after_seconds(response.headers.get("Retry-After")))
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _request(self, method, url, headers, data, params) -> requests.Response:
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                params=params,
                timeout=self.settings.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ServingUIError(
                f"Could not reach Serving UI at {self.settings.url} ({exc.__class__.__name__}: "
                f"{exc}). Set SERVING_UI_URL, or use the target serving-ui:/<url>.",
                "ENDPOINT_NOT_FOUND",
            ) from exc

    def _json(self, response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise self._not_serving_ui(response) from None
        if not isinstance(body, dict):
            raise self._not_serving_ui(response)
        return body

    def _not_serving_ui(self, response: requests.Response) -> ServingUIError:
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        return ServingUIError(
            f"{self.settings.url} answered {response.request.method} {response.url} with HTTP "
            f"{response.status_code} ({kind}), not Serving UI's JSON API: is SERVING_UI_URL "
            "(or the serving-ui:/<url> target) the address of Serving UI?",
            "ENDPOINT_NOT_FOUND",
        )

    def _error(self, response: requests.Response) -> ServingUIError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "error_code" not in body:
            return self._not_serving_ui(response)
        code, message = str(body["error_code"]), str(body.get("message", ""))
        if response.status_code == 401:
            return ServingUIError(
                f"Serving UI at {self.settings.url} did not accept the token: {message} "
                "Set SERVING_UI_TOKEN to a valid, unexpired token.",
                "UNAUTHENTICATED",
            )
        if response.status_code in RETRY_STATUSES:
            message = f"{message} (still refused after {self.settings.max_retries} retries)"
        return ServingUIError(message, code)
