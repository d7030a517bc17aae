"""Private files, the API's body limit, retention of replicas, logs and events, the Logs
tab's reads, and the one admin token ``make run`` prints (the API refusing a body over
the limit: ``tests/integration/api/test_parsers.py``)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone

from endpoints.api.parsers import read_limited
from endpoints.auth import token_for
from endpoints.errors import PayloadTooLarge
from endpoints.management.commands.run_product import AUTO_TOKEN_NAME, run_token
from endpoints.models import (
    AccessToken,
    ComputeConfig,
    Event,
    EventType,
    Replica,
    ReplicaState,
    ServiceState,
    ServingEndpoint,
    now_ms,
)
from endpoints.provisioning import housekeeping
from endpoints.telemetry import logs
from serving_ui import private
from tests.support.rows import add_version

DAY_MS = 24 * 3600 * 1000


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- private files ------------------------------------------------------------------------------


def test_secret_key_file_created_0600(tmp_path):
    """A first start with the loosest umask: the secret key and the SQLite database (and
    its WAL files) are created 0600, by the open call itself."""
    var = tmp_path / "var"
    env = {
        **os.environ,
        "SERVING_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "serving_ui.settings",
    }
    for name in ("SECRET_KEY", "DATABASE_URL", "TEST_DATABASE_PATH"):
        env.pop(name, None)
    code = (
        "import os; os.umask(0)\n"
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        "    c.execute('CREATE TABLE probe (x)'); c.execute('INSERT INTO probe VALUES (1)')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert mode(var / "secret_key") == 0o600
    assert len((var / "secret_key").read_text().strip()) >= 50
    assert mode(var / "db.sqlite3") == 0o600
    for extra in ("db.sqlite3-wal", "db.sqlite3-shm"):
        if (var / extra).exists():
            assert mode(var / extra) == 0o600, extra
    assert mode(var) == 0o700


def test_private_files_never_exist_with_other_permissions(tmp_path, monkeypatch):
    """The mode is given to open(2): a file that exists at all is already 0600."""
    created = []
    real_open = os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):
        created.append((Path(path).name, flags & os.O_CREAT, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching_open)
    old = os.umask(0)
    try:
        key = private.secret_key(tmp_path / "secret_key")
        assert private.secret_key(tmp_path / "secret_key") == key  # read, not made again
        private.private_sqlite(str(tmp_path / "db.sqlite3"))
        private.replace_private(tmp_path / "token", "sui_x\n")
    finally:
        os.umask(old)
    assert all(m == 0o600 for _, creating, m in created if creating)
    for name in ("secret_key", "db.sqlite3", "token"):
        assert mode(tmp_path / name) == 0o600, name


# --- the API's body limit -----------------------------------------------------------------------


def test_a_body_without_content_length_is_read_one_byte_past_the_limit_only(settings):
    settings.API_MAX_BODY_BYTES = 100
    request = SimpleNamespace(META={})
    stream = io.BytesIO(b"x" * 10_000)
    with pytest.raises(PayloadTooLarge):
        read_limited(stream, {"request": request})
    assert stream.tell() == 101
    assert read_limited(io.BytesIO(b"{}"), {"request": request}) == b"{}"


# --- retention ----------------------------------------------------------------------------------


def _log(path: Path, text: str = "line\n") -> str:
    path.write_text(text)
    Path(str(path) + ".1").write_text("older\n")
    return str(path)


@pytest.mark.django_db
def test_retention_deletes_old_events_and_logs(owner, tmp_path, settings):
    settings.SERVING = {**settings.SERVING, "REPLICA_RETENTION_DAYS": 7, "EVENT_RETENTION_DAYS": 30}
    now = timezone.now()
    endpoint = ServingEndpoint.objects.create(registered_model_name="iris", creator=owner)
    ComputeConfig.objects.create(endpoint=endpoint, stage="Production")
    served = add_version(endpoint, "2", "Production")
    gone = add_version(
        endpoint,
        "1",
        "Staging",
        state=ServiceState.FAILED,
        desired=False,
        created_at=now - timedelta(days=20),
    )
    gone.build_log_path = _log(tmp_path / "build-1.log")
    served.build_log_path = _log(tmp_path / "build-2.log")
    gone.save()
    served.save()

    def replica(version, rid, state, stopped_days_ago):
        stopped = now - timedelta(days=stopped_days_ago) if stopped_days_ago is not None else None
        return Replica.objects.create(
            version=version,
            replica_id=rid,
            port=1,
            state=state,
            stopped_at=stopped,
            log_path=_log(tmp_path / f"{rid}.log"),
        )

    old_stop = replica(gone, "old-stopped", ReplicaState.TERMINATED, 10)
    old_error = replica(served, "old-error", ReplicaState.ERROR, 8)
    recent = replica(served, "recent-stop", ReplicaState.TERMINATED, 1)
    running = replica(served, "running", ReplicaState.RUNNING, None)
    old_event = Event.objects.create(
        endpoint=endpoint,
        type=EventType.ENDPOINT_ENABLED,
        message="old",
        timestamp=now_ms() - 31 * DAY_MS,
    )
    new_event = Event.objects.create(
        endpoint=endpoint,
        type=EventType.ENDPOINT_ENABLED,
        message="new",
        timestamp=now_ms() - DAY_MS,
    )

    retained = housekeeping.apply_retention(now=now)

    assert set(Replica.objects.values_list("replica_id", flat=True)) == {"recent-stop", "running"}
    for gone_replica in (old_stop, old_error):
        assert not Path(gone_replica.log_path).exists()
        assert not Path(gone_replica.log_path + ".1").exists()
    for kept in (recent, running):
        assert Path(kept.log_path).exists() and Path(kept.log_path + ".1").exists()
    gone.refresh_from_db()
    served.refresh_from_db()
    assert gone.build_log_path == "" and not (tmp_path / "build-1.log").exists()
    assert Path(served.build_log_path).exists()
    assert list(Event.objects.values_list("pk", flat=True)) == [new_event.pk]
    assert not Event.objects.filter(pk=old_event.pk).exists()
    assert (retained.replicas, retained.replica_logs, retained.build_logs, retained.events) == (
        2,
        4,
        2,
        1,
    )
    # Running it again changes nothing.
    assert housekeeping.apply_retention(now=now) == housekeeping.Retained()


def test_retention_runs_periodically_under_celery_beat():
    from serving_ui.celery import app

    app.loader.import_default_modules()
    app.finalize()
    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "endpoints.tasks.apply_retention" in tasks
    assert "endpoints.tasks.apply_retention" in app.tasks


# --- the Logs tab reads what it shows -----------------------------------------------------------


@pytest.mark.django_db
def test_logs_tab_reads_only_the_tail_of_the_replicas_it_shows(owner, tmp_path, monkeypatch):
    endpoint = ServingEndpoint.objects.create(registered_model_name="iris", creator=owner)
    version = add_version(endpoint, "1", "Production")
    start = timezone.now() - timedelta(hours=1)
    for i in range(logs.REPLICAS_SHOWN + 5):
        path = tmp_path / f"r{i:02d}.log"
        path.write_text(f"r{i:02d} " + "x" * 1000 + "\n" * 1 + f"last line of r{i:02d}\n")
        with path.open("a") as f:
            f.write(("padding " * 16 + "\n") * 8000)  # ~1 MB each
            f.write(f"end of r{i:02d}\n")
        Replica.objects.create(
            version=version,
            replica_id=f"r{i:02d}",
            port=1,
            state=ReplicaState.TERMINATED,
            log_path=str(path),
            created_at=start + timedelta(minutes=i),
        )
    asked = []
    runtime = logs.get_runtime()
    real = runtime.read_log
    monkeypatch.setattr(
        type(runtime),
        "read_log",
        lambda self, path, *, max_bytes: asked.append(max_bytes) or real(path, max_bytes=max_bytes),
    )
    text = logs.service_logs(version)
    assert len(asked) == logs.REPLICAS_SHOWN
    assert sum(asked) <= logs.MAX_LOG_BYTES
    assert "end of r24" in text and "end of r05" in text
    assert "[r04]" not in text  # older than the replicas the page shows
    assert len(text.encode()) <= logs.MAX_LOG_BYTES + 16 * logs.MAX_MERGED_LINES


# --- make run's token ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_make_run_prints_one_token_reused_across_starts(admin_user, tmp_path, settings):
    path = tmp_path / "admin-token"
    first = run_token(admin_user, path)
    assert run_token(admin_user, path) == first
    assert path.read_text().strip() == first and mode(path) == 0o600
    printed = AccessToken.objects.filter(user=admin_user, name=AUTO_TOKEN_NAME)
    assert printed.count() == 1
    days = settings.SERVING["RUN_TOKEN_DAYS"]
    expected = timezone.now() + timedelta(days=days)
    assert abs((printed.get().expires_at - expected).total_seconds()) < 60
    # Once it is revoked (or expired), the next start makes a new one and revokes nothing else.
    printed.update(revoked_at=timezone.now())
    second = run_token(admin_user, path)
    assert second != first and token_for(second) is not None and token_for(first) is None
    assert path.read_text().strip() == second and mode(path) == 0o600
    assert AccessToken.objects.active().filter(name=AUTO_TOKEN_NAME).count() == 1
