"""Production settings: ``check --deploy`` clean, security headers, CSRF on every UI form
and on session-authenticated API writes, and known vulnerabilities in the dependencies."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver

pytestmark = pytest.mark.any_database

ROOT = Path(__file__).resolve().parents[2]
HOST = "serving.example.com"


def production_env(var_dir: Path) -> dict[str, str]:
    """What docs/configuration.md asks of a deployment behind TLS."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return {
        **keep,
        "DJANGO_SETTINGS_MODULE": "serving_ui.settings",
        "SERVING_VAR_DIR": str(var_dir),
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": HOST,
        "SECURE_COOKIES": "true",
        "SECURE_SSL_REDIRECT": "true",
        "SECURE_HSTS_SECONDS": "31536000",
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


HEADERS_SCRIPT = """
import json
from django.test import Client
client = Client(HTTP_HOST="serving.example.com")
plain = client.get("/login/")
secure = client.get("/login/", secure=True)
cookie = secure.cookies.get("csrftoken")
print(json.dumps({
    "plain_status": plain.status_code,
    "plain_location": plain.headers.get("Location", ""),
    "secure_status": secure.status_code,
    "headers": dict(secure.headers),
    "csrf_cookie_secure": bool(cookie and cookie["secure"]),
}))
"""


def test_production_answers_carry_security_headers_and_secure_cookies(tmp_path):
    result = manage(production_env(tmp_path), "shell", "-c", HEADERS_SCRIPT)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["plain_status"] == 301
    assert seen["plain_location"].startswith(f"https://{HOST}/")
    assert seen["secure_status"] == 200
    headers = seen["headers"]
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "includeSubDomains" in headers["Strict-Transport-Security"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert seen["csrf_cookie_secure"]


SCORING_SCRIPT = """
import asyncio, json
from serving_ui.asgi import application

def call(host, scheme="http"):
    scope = {"type": "http", "method": "POST", "scheme": scheme,
             "path": "/model-endpoint/iris-classifier/Production/invocations",
             "headers": [(b"host", host.encode()), (b"authorization", b"Bearer sui_x"),
                         (b"content-type", b"application/json")]}
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}
    async def send(message):
        sent.append(message)
    asyncio.run(application(scope, receive, send))
    return {"status": sent[0]["status"],
            "headers": {k.decode(): v.decode() for k, v in sent[0]["headers"]},
            "body": json.loads(sent[1]["body"])}

print(json.dumps({"plain": call("serving.example.com"), "foreign": call("evil.example")}))
"""


def test_production_scoring_refuses_plain_http_and_unknown_hosts(tmp_path):
    """The gateway answers scoring URLs without Django's middleware: it applies the same
    settings itself."""
    result = manage(production_env(tmp_path), "shell", "-c", SCORING_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    plain = seen["plain"]
    assert plain["status"] == 403 and plain["body"]["error_code"] == "PERMISSION_DENIED"
    assert "HTTPS" in plain["body"]["message"]
    assert plain["headers"]["x-content-type-options"] == "nosniff"
    foreign = seen["foreign"]
    assert foreign["status"] == 400 and "ALLOWED_HOSTS" in foreign["body"]["message"]


# --- CSRF ----------------------------------------------------------------------------------


def _ui_paths() -> list[str]:
    """Every UI URL (not the API, admin or the gateway), with sample arguments."""
    samples = {"name": "iris-classifier", "pk": "1"}
    paths = []
    for entry in get_resolver().url_patterns:
        if not isinstance(entry, URLPattern) and str(entry.pattern) in ("admin/", "api/"):
            continue
        for pattern in getattr(entry, "url_patterns", [entry]):
            route = str(pattern.pattern)
            for key, value in samples.items():
                route = route.replace(f"<str:{key}>", value).replace(f"<int:{key}>", value)
            assert "<" not in route, f"no sample argument for {route}"
            paths.append("/" + route)
    return paths


def test_every_ui_form_refuses_a_post_without_the_csrf_token(db, admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    paths = _ui_paths()
    assert "/login/" in paths and len(paths) > 5
    for path in paths:
        response = client.post(path, {"stage": "Production", "comment": "x"})
        assert response.status_code == 403, (path, response.status_code)
        assert b"CSRF" in response.content, path


def test_login_form_needs_its_csrf_token_and_works_with_it(db, admin_user):
    client = Client(enforce_csrf_checks=True)
    refused = client.post("/login/", {"username": "root", "password": "pw-root-123"})
    assert refused.status_code == 403
    page = client.get("/login/")
    token = page.cookies["csrftoken"].value
    assert b"csrfmiddlewaretoken" in page.content
    accepted = client.post(
        "/login/",
        {"username": "root", "password": "pw-root-123", "csrfmiddlewaretoken": token},
    )
    assert accepted.status_code == 302


def test_api_writes_with_a_browser_session_need_the_csrf_token(db, admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    url = "/api/2.0/token/create"
    refused = client.post(url, {}, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["message"]
    client.get("/login/")
    token = client.cookies["csrftoken"].value
    accepted = client.post(url, {}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200, accepted.content


# --- dependencies ----------------------------------------------------------------------------

# Findings that do not apply to this product, each with the reason (docs/reliability.md).
ACCEPTED_VULNERABILITIES: dict[str, str] = {}


def test_dependencies_have_no_known_vulnerabilities(tmp_path):
    audit = shutil.which("pip-audit", path=str(Path(sys.executable).parent))
    if audit is None:
        pytest.skip("pip-audit is not installed (it is part of the test extras)")
    report = tmp_path / "audit.json"
    result = subprocess.run(
        [audit, "--local", "--progress-spinner", "off", "--format", "json", "-o", str(report)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if not report.exists() or not report.read_text().strip():
        pytest.skip(f"pip-audit could not query the vulnerability database: {result.stderr[-500:]}")
    findings = [
        (dep["name"], dep["version"], vuln["id"])
        for dep in json.loads(report.read_text())["dependencies"]
        for vuln in dep.get("vulns", [])
        if vuln["id"] not in ACCEPTED_VULNERABILITIES
    ]
    assert findings == [], findings
