"""``manage.py run_product``: the whole product in the foreground (what ``make run`` runs).

Starts Redis (when none answers at REDIS_URL on loopback), migrates, registers the demo
models, makes sure an ``admin`` login exists, then runs the web server (uvicorn: the
scoring gateway's front door, with UI, API and admin beside it on the same port), a Celery
worker and Celery beat. Ctrl-C, SIGTERM or closing the terminal stops every process it
started, model server replicas included; the next start brings the replicas back from the
desired state kept in the database.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from endpoints import services
from endpoints.auth import active_tokens
from endpoints.dev import devstack
from endpoints.dev.devstack import ManagedProcess
from endpoints.models import AccessToken, hash_token
from serving_ui import private

AUTO_TOKEN_NAME = "printed by make run"  # noqa: S105 - a label, not a secret
# Under VAR_DIR, mode 0600: the plaintext of the token the banner prints.
RUN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret


def run_token(user: AbstractBaseUser, path: Path) -> str:
    """The admin token ``make run`` prints: the one kept in ``path`` while it is still
    valid, else a new one (expiring after ``SERVING_RUN_TOKEN_DAYS``) written there with
    mode 0600, the previous printed tokens revoked. One token, not one per start."""
    with suppress(FileNotFoundError):
        plaintext = path.read_text().strip()
        if active_tokens(hash_token(plaintext)).filter(user=user, name=AUTO_TOKEN_NAME).exists():
            return plaintext
    for old in AccessToken.objects.active().filter(user=user, name=AUTO_TOKEN_NAME):
        services.token_revoke(token_id=old.pk, user=user)
    days = int(settings.SERVING["RUN_TOKEN_DAYS"])
    expires_at = timezone.now() + timedelta(days=days) if days > 0 else None
    _, plaintext = services.token_create(user=user, name=AUTO_TOKEN_NAME, expires_at=expires_at)
    private.replace_private(path, plaintext + "\n")
    return plaintext


def web_command(*, host: str, port: int, processes: int, access_log: bool = False) -> list[str]:
    """The web server as `make run` starts it: the front door (scoring on the event loop,
    UI, API and admin through Django's ASGI handler) in ``processes`` single-worker
    uvicorn processes on one socket (see endpoints/gateway/server.py)."""
    command = [sys.executable, "-m", "endpoints.gateway.server"]
    command += ["--host", host, "--port", str(port), "--processes", str(processes)]
    return [*command, "--access-log"] if access_log else command


def worker_command() -> list[str]:
    """The Celery worker as `make run` starts it (beat runs beside it: ``beat_command``)."""
    return [
        *(sys.executable, "-m", "celery", "-A", "serving_ui"),
        # No start-up banner: it would print after the product's "ready" lines.
        *("--quiet", "worker", "--loglevel"),
        # Every periodic reconcile at INFO would drown the console; events and the Logs
        # tab tell what happened.
        os.environ.get("WORKER_LOG_LEVEL", "WARNING"),
        *("--concurrency", "2", "--hostname", "worker@%h"),
    ]


def beat_command(var_dir: Path) -> list[str]:
    """Celery beat as `make run` starts it, its schedule kept under ``var_dir``."""
    return [
        *(sys.executable, "-m", "celery", "-A", "serving_ui", "--quiet", "beat"),
        *("--loglevel", "WARNING", "--schedule", str(var_dir / "celerybeat-schedule")),
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
        self.children: list[ManagedProcess] = []
        self.stopping = False
        # SIGHUP: the terminal closed; stop as for Ctrl-C (Redis would be left running).
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            self._start_redis_if_needed()
            call_command("migrate", interactive=False, verbosity=0)
            if not options["no_demo"] and os.environ.get("SERVING_DEMO", "true") != "false":
                self.stdout.write("Registering the demo models (first start trains them)…")
                call_command("seed_demo")
            login, password = self._ensure_admin()
            token, token_file = self._run_token(login)
            url = f"http://{options['host']}:{options['port']}/"
            self._start_services(
                str(options["host"]), int(options["port"]), int(options["web_workers"])
            )
            self._wait_until_up(url)
            self._banner(url, login, password, token, token_file)
            self._supervise()
        finally:
            self._shutdown()

    # --- start-up -------------------------------------------------------------------------

    def _start_redis_if_needed(self) -> None:
        if devstack.redis_answers(settings.REDIS_URL):
            return
        url = urlparse(settings.REDIS_URL)
        if url.hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"Redis at {settings.REDIS_URL} does not answer.")
        data_dir = Path(settings.VAR_DIR) / "redis"
        server = self._spawn(
            "redis", devstack.redis_command(url.port or 6379, data_dir, url.password or "")
        )
        try:
            server.wait_until(
                lambda: devstack.redis_answers(settings.REDIS_URL),
                timeout=10,
                what="redis-server",
                interval=0.1,
            )
        except devstack.StackError:
            raise SystemExit("redis-server did not start; see its output above.") from None

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

    def _run_token(self, username: str) -> tuple[str, Path]:
        user = get_user_model().objects.get(username=username)
        path = Path(settings.VAR_DIR) / RUN_TOKEN_FILE
        return run_token(user, path), path

    def _start_services(self, host: str, port: int, web_workers: int) -> None:
        self._spawn(
            "web",
            web_command(host=host, port=port, processes=web_workers, access_log=True),
        )
        self._spawn("worker", worker_command())
        self._spawn("beat", beat_command(Path(settings.VAR_DIR)))

    def _spawn(self, name: str, cmd: list[str]) -> ManagedProcess:
        # The output is the console's, but each child has a session of its own: Ctrl-C
        # (or the terminal's hangup), which the terminal sends to its whole process group,
        # reaches this process alone, which stops the others in order (``_shutdown``).
        # Otherwise Redis went first, under the worker's feet, and the Celery worker took
        # a hangup for an order to restart itself.
        process = ManagedProcess(name, cmd, None).start()
        self.children.append(process)
        return process

    def _wait_until_up(self, url: str) -> None:
        def up() -> bool:
            self._check_children()
            return self.stopping or devstack.http_status(url + "login/") == 200

        try:
            devstack.wait_for(up, timeout=60, what="the web server", interval=0.3)
        except devstack.WaitTimeout:
            self.stopping = True
        if self.stopping:
            raise SystemExit(f"The web server did not answer at {url} within 60 s.")

    def _banner(
        self, url: str, login: str, password: str | None, token: str, token_file: Path
    ) -> None:
        shown = password or "(unchanged: as printed on first start, or DJANGO_SUPERUSER_PASSWORD)"
        self.stdout.write(
            "\n"
            "==================================================================\n"
            f" Serving UI is ready: {url}\n"
            f"   login:     {login}\n"
            f"   password:  {shown}\n"
            f"   API token: {token}\n"
            f"              (the same at every start until it expires; kept in {token_file})\n"
            f"   try:       curl -u token:$TOKEN {url}api/2.0/preview/mlflow/endpoints-v2/list\n"
            " Stop with Ctrl-C.\n"
            "==================================================================\n"
        )
        self.stdout.flush()

    # --- running and stopping -------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _check_children(self) -> None:
        for child in self.children:
            if not child.alive and not self.stopping:
                raise SystemExit(
                    f"{child.name} exited with code {child.process.returncode}; stopping."
                )

    def _supervise(self) -> None:
        while not self.stopping:
            self._check_children()
            time.sleep(0.5)

    def _shutdown(self) -> None:
        self.stopping = True
        # Redis last: stopping the replicas bumps the routing generation kept in it.
        redis_child = [c for c in self.children if c.name == "redis"]
        others = [c for c in self.children if c.name != "redis"]
        # SIGINT, as Ctrl-C reached them when they shared the terminal: Celery's pool
        # processes ignore it and finish their task for their parent's warm shutdown,
        # where a SIGTERM to the group would kill them mid-task.
        devstack.stop_all(others, sig=signal.SIGINT, timeout=25)
        self._stop_replicas()
        devstack.stop_all(redis_child, timeout=25)
        self.children.clear()

    def _stop_replicas(self) -> None:
        from endpoints.provisioning.reconcile import stop_all_replicas

        stopped = stop_all_replicas()
        if stopped:
            self.stdout.write(f"Stopped {stopped} model server replica(s).")
