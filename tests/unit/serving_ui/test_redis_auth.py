"""The password generated for this installation's Redis: in a private file and in the URL
the product uses, never in a replica's environment; an operator's own URL is used as given
(Redis refusing a connection without it: ``tests/integration/test_redis_password.py``)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from endpoints.runtime.base import ReplicaSpec
from endpoints.runtime.local import base_environment, replica_environment
from serving_ui.private import REDIS_PASSWORD_FILE, private_file


def _password() -> str:
    return (Path(settings.VAR_DIR) / REDIS_PASSWORD_FILE).read_text().strip()


def test_the_password_file_is_readable_by_its_owner_only():
    path = Path(settings.VAR_DIR) / REDIS_PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(_password()) >= 32
    assert f":{_password()}@" in settings.REDIS_URL


def test_a_private_file_is_created_with_mode_0600_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        value = private_file(tmp_path / "secret", lambda: "s3cret")
    finally:
        os.umask(previous)
    assert value == "s3cret"
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    # Created once: a later call reads it, never replaces it.
    assert private_file(tmp_path / "secret", lambda: "other") == "s3cret"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_a_replica_environment_has_no_redis_password():
    spec = ReplicaSpec(
        replica_id="r", model_path="/m", host="127.0.0.1", port=1, log_path="/l", python="p"
    )
    for env in (base_environment(), replica_environment(spec)):
        assert not [k for k in env if "REDIS" in k or "DJANGO" in k]
        assert not [k for k, v in env.items() if _password() in v]


def test_a_redis_url_given_by_the_operator_is_used_as_given(tmp_path):
    given = "redis://redis.internal:6390/3"
    out = subprocess.run(
        [sys.executable, "-c", "from serving_ui import settings; print(settings.REDIS_URL)"],
        env={**os.environ, "REDIS_URL": given, "SERVING_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == given
    assert not (tmp_path / REDIS_PASSWORD_FILE).exists()


def test_the_embedded_redis_port_is_a_setting_and_keeps_the_generated_password(tmp_path):
    """`PORT=8001 SERVING_REDIS_PORT=6380 make run` beside another checkout's `make run`."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env |= {"SERVING_VAR_DIR": str(tmp_path), "SERVING_REDIS_PORT": "6390"}
    env["DJANGO_SETTINGS_MODULE"] = "serving_ui.settings"
    code = "from django.conf import settings; print(settings.REDIS_URL)"
    url = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    password = (tmp_path / REDIS_PASSWORD_FILE).read_text().strip()
    assert url == f"redis://:{password}@127.0.0.1:6390/0"
