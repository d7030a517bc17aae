"""``manage.py run_product``: the whole product in the foreground (what ``make run`` runs).

Starts Redis (when none answers at REDIS_URL on loopback), migrates, registers the demo
models, makes sure an ``admin`` login exists, then runs the web server (gunicorn: UI, API,
admin and the scoring gateway), a Celery worker and Celery beat. Ctrl-C or SIGTERM stops
every process it started, model server replicas included; the next start brings the
replicas back from the desired state kept in the database.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from endpoints import services
from endpoints.models import AccessToken

AUTO_TOKEN_NAME = "printed by make run"  # noqa: S105 - a label, not a secret


# Measured with `make bench` (docs/performance.md): gthread workers, each thread one
# request at a time; threads above the replicas' concurrency let requests queue and wait
# for a cold start without blocking others.
WEB_THREADS = 16


def gunicorn_command(
    *, host: str, port: int, workers: int, threads: int = WEB_THREADS
) -> list[str]:
    """The web server (UI, API, admin and the scoring gateway) as `make run` starts it."""
    return [
        str(Path(sys.executable).parent / "gunicorn"),
        "serving_ui.wsgi:application",
        "--bind",
        f"{host}:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        str(int(settings.SERVING["REQUEST_TIMEOUT_SECONDS"]) + 60),
        "--graceful-timeout",
        "20",
    ]


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and Celery beat (and Redis if needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-demo", action="store_true", help="Skip the demo models.")
        parser.add_argument(
            "--web-workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2"))
        )

    def handle(self, *args: object, **options: object) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start_redis_if_needed()
            call_command("migrate", interactive=False, verbosity=0)
            if not options["no_demo"] and os.environ.get("SERVING_DEMO", "true") != "false":
                self.stdout.write("Registering the demo models (first start trains them)…")
                call_command("seed_demo")
            login, password = self._ensure_admin()
            token = self._fresh_token(login)
            url = f"http://{options['host']}:{options['port']}/"
            self._start_services(
                str(options["host"]), int(options["port"]), int(options["web_workers"])
            )
            self._wait_until_up(url)
            self._banner(url, login, password, token)
            self._supervise()
        finally:
            self._shutdown()

    # --- start-up -------------------------------------------------------------------------

    def _start_redis_if_needed(self) -> None:
        url = urlparse(settings.REDIS_URL)
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
        try:
            client.ping()
            return
        except redis.ConnectionError:
            pass
        if url.hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"Redis at {settings.REDIS_URL} does not answer.")
        data_dir = Path(settings.VAR_DIR) / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "redis",
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(url.port or 6379),
                "--dir",
                str(data_dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise SystemExit("redis-server did not start; see its output above.")

    def _ensure_admin(self) -> tuple[str, str | None]:
        """The ``admin`` login; its password is printed only when this call chose it."""
        User = get_user_model()
        env_password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        user = User.objects.filter(username="admin").first()
        if user is None:
            password = env_password or secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@example.com", password)
            return "admin", password
        if env_password and not user.check_password(env_password):
            user.set_password(env_password)
            user.save(update_fields=["password"])
        return "admin", None

    def _fresh_token(self, username: str) -> str:
        """A new token for this run; the one printed by the previous run is revoked."""
        user = get_user_model().objects.get(username=username)
        for old in AccessToken.objects.active().filter(user=user, name=AUTO_TOKEN_NAME):
            services.token_revoke(token_id=old.pk, user=user)
        _, plaintext = services.token_create(user=user, name=AUTO_TOKEN_NAME)
        return plaintext

    def _start_services(self, host: str, port: int, web_workers: int) -> None:
        py = sys.executable
        var = Path(settings.VAR_DIR)
        self._spawn(
            "web",
            [
                *gunicorn_command(host=host, port=port, workers=web_workers),
                "--access-logfile",
                "-",
            ],
        )
        self._spawn(
            "worker",
            [
                py,
                "-m",
                "celery",
                "-A",
                "serving_ui",
                # No start-up banner: it would print after the product's "ready" lines.
                "--quiet",
                "worker",
                "--loglevel",
                # Every periodic reconcile at INFO would drown the console; events and
                # the Logs tab tell what happened.
                os.environ.get("WORKER_LOG_LEVEL", "WARNING"),
                "--concurrency",
                "2",
                "--hostname",
                "worker@%h",
            ],
        )
        self._spawn(
            "beat",
            [
                py,
                "-m",
                "celery",
                "-A",
                "serving_ui",
                "--quiet",
                "beat",
                "--loglevel",
                "WARNING",
                "--schedule",
                str(var / "celerybeat-schedule"),
            ],
        )

    def _spawn(self, name: str, cmd: list[str]) -> None:
        process = subprocess.Popen(cmd, cwd=settings.BASE_DIR)
        self.children.append((name, process))

    def _wait_until_up(self, url: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stopping:
            try:
                with urllib.request.urlopen(url + "login/", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
            self._check_children()
        raise SystemExit(f"The web server did not answer at {url} within 60 s.")

    def _banner(self, url: str, login: str, password: str | None, token: str) -> None:
        shown = password or "(unchanged: as printed on first start, or DJANGO_SUPERUSER_PASSWORD)"
        self.stdout.write(
            "\n"
            "==================================================================\n"
            f" Serving UI is ready: {url}\n"
            f"   login:     {login}\n"
            f"   password:  {shown}\n"
            f"   API token: {token}\n"
            f"   try:       curl -u token:$TOKEN {url}api/2.0/preview/mlflow/endpoints-v2/list\n"
            " Stop with Ctrl-C.\n"
            "==================================================================\n"
        )
        self.stdout.flush()

    # --- running and stopping -------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _check_children(self) -> None:
        for name, process in self.children:
            if process.poll() is not None and not self.stopping:
                raise SystemExit(f"{name} exited with code {process.returncode}; stopping.")

    def _supervise(self) -> None:
        while not self.stopping:
            self._check_children()
            time.sleep(0.5)

    def _shutdown(self) -> None:
        self.stopping = True
        redis_child = [(n, p) for n, p in self.children if n == "redis"]
        others = [(n, p) for n, p in self.children if n != "redis"]
        _terminate(others)
        self._stop_replicas()
        _terminate(redis_child)
        self.children.clear()

    def _stop_replicas(self) -> None:
        from endpoints.provisioning.reconcile import stop_all_replicas

        stopped = stop_all_replicas()
        if stopped:
            self.stdout.write(f"Stopped {stopped} model server replica(s).")


def _terminate(children: list[tuple[str, subprocess.Popen]]) -> None:
    for _, process in children:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 25
    for _, process in children:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
