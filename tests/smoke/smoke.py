"""`make run` and `make run-cluster` started as users start them, end to end (`make smoke`).

Each from a fresh clone of this checkout's HEAD in the account's home, as root and as an
ordinary user (created when the smoke runs as root, with a clone of its own), reusing the
Python environment that `make install` built (`--venv`) instead of installing one per
clone. Each run:

1. `make <target> VENV=<env>` in its own process group, on free loopback ports;
2. waits for the banner (URL, login, password, API token) and logs in with them;
3. enables iris-classifier through the REST API with the printed token, and scores it
   through the front door (`/model-endpoint/iris-classifier/Production/invocations`);
4. sends SIGINT to the process group, as Ctrl-C on a terminal does: make ends as Ctrl-C
   ends it (killed by SIGINT: status 130 in a shell), no process of the run is left,
   replicas, Ray's and PostgreSQL's included, and nothing complained while stopping.

Then `make run` starts once more in the same clone and is stopped as a closed terminal
stops it (SIGHUP to the process group), with the same checks.

The interpreter of an environment built as root may be out of an ordinary user's reach (a
pyenv Python under /root): the user then gets an environment of its own, made by a Python
of the same version it may run, with the built environment's packages (hard links).
Run as an ordinary user, the smoke runs as that user only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.cookiejar
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from accounts import (
    CHECKOUT,
    Account,
    SmokeFailure,
    check_imports_clone,
    environment_for,
    fresh_clone,
    ordinary_user,
    say,
)

READY_SECONDS = {"run": 300, "run-cluster": 480}
SCORE_SECONDS = 240
STOP_SECONDS = 150
MODEL = "iris-classifier"
ROWS = {
    "dataframe_split": {
        "columns": [
            "sepal length (cm)",
            "sepal width (cm)",
            "petal length (cm)",
            "petal width (cm)",
        ],
        "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]],
    }
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Banner:
    url: str
    login: str
    password: str
    token: str


@dataclass
class Run:
    account: Account
    clone: Path
    venv: Path
    target: str
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    # Ctrl-C; SIGHUP is what the terminal's process group gets when the terminal closes.
    stop_signal: int = signal.SIGINT
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    process: subprocess.Popen | None = None
    seen: dict[int, tuple[float, str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        how = "" if self.stop_signal == signal.SIGINT else ", its terminal closed"
        return f"{self.account.name}: make {self.target}{how}"

    def start(self) -> None:
        env = self.account.env(
            **self.settings,
            PORT=str(free_port()),
            SERVING_REDIS_PORT=str(free_port()),
            SERVING_SMOKE_RUN=self.marker,
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", self.target, f"VENV={self.venv}"],
                cwd=self.clone,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal's job
                **self.account.popen_args(),
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_banner(self) -> Banner:
        pattern = re.compile(
            r"Serving UI is ready: (?P<url>http://127\.0\.0\.1:\d+/)\s+"
            r"login:\s+(?P<login>\S+)\s+password: +(?P<password>.+?)\n\s+"
            r"API token:\s+(?P<token>sui_\S+)"
        )
        deadline = time.monotonic() + READY_SECONDS[self.target]
        while time.monotonic() < deadline:
            found = pattern.search(self.output())
            if found:
                return Banner(**found.groupdict())
            if self.process.poll() is not None:
                raise SmokeFailure(f"{self.label} exited with {self.process.returncode}")
            time.sleep(1)
        raise SmokeFailure(f"{self.label} printed no banner in {READY_SECONDS[self.target]} s")

    def processes(self) -> list[psutil.Process]:
        """Every process of this run: make's descendants, and anything that carries the
        run's environment or names its clone (replicas have sessions of their own)."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            found[root.pid] = root
            found.update({p.pid: p for p in root.children(recursive=True)})
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if self._belongs(proc):
                    found[proc.pid] = proc
        return list(found.values())

    def _belongs(self, proc: psutil.Process) -> bool:
        if any(str(self.clone) in part for part in proc.cmdline()):
            return True
        with contextlib.suppress(psutil.AccessDenied):
            return proc.environ().get("SERVING_SMOKE_RUN") == self.marker
        return False

    def remember_processes(self) -> None:
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                name = " ".join(proc.cmdline())[:120] or proc.name()
                self.seen[proc.pid] = (proc.create_time(), name)

    def left_over(self) -> list[str]:
        left = []
        for pid, (created, name) in self.seen.items():
            with contextlib.suppress(psutil.Error):
                if _alive(psutil.Process(pid)) and psutil.Process(pid).create_time() == created:
                    left.append(f"{pid} {name}")
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                if _alive(proc):
                    left.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        return sorted(set(left))

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the whole process group; make's exit status."""
        os.killpg(self.process.pid, self.stop_signal)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            raise SmokeFailure(f"{self.label} still runs {STOP_SECONDS} s after Ctrl-C") from None

    def kill_everything(self) -> None:
        """After a failure: nothing of the run may outlive the smoke."""
        procs = self.processes()
        for pid in self.seen:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == self.seen[pid][0]:
                    procs.append(proc)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)


def _alive(proc: psutil.Process) -> bool:
    """Exited, not yet reaped (a container's process 1 may never reap orphans): gone."""
    return proc.status() != psutil.STATUS_ZOMBIE


# --- talking to the product -------------------------------------------------------------------


def log_in(banner: Banner) -> None:
    """The printed login and password open a session in the UI."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(banner.url + "login/", timeout=30).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    if csrf is None:
        raise SmokeFailure("the login page has no CSRF token")
    form = {"username": banner.login, "password": banner.password}
    form["csrfmiddlewaretoken"] = csrf.group(1)
    data = urllib.parse.urlencode(form).encode()
    with opener.open(banner.url + "login/", data=data, timeout=30) as answer:
        landed = urllib.parse.urlparse(answer.geturl()).path
    if landed.startswith("/login") or "sessionid" not in {c.name for c in jar}:
        raise SmokeFailure(f"logging in as {banner.login} with the printed password failed")


def call(banner: Banner, path: str, body: dict | None = None) -> tuple[int, str]:
    """POST ``body`` (GET without one) with the printed token; the status and the text."""
    request = urllib.request.Request(
        banner.url + path.lstrip("/"),
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    credentials = base64.b64encode(f"token:{banner.token}".encode()).decode()
    request.add_header("Authorization", f"Basic {credentials}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def enable_and_score(banner: Banner) -> list:
    status, text = call(
        banner, "api/2.0/preview/mlflow/endpoints-v2/enable", {"registered_model_name": MODEL}
    )
    if status != 200 and not (status == 409 and "already enabled" in text):
        raise SmokeFailure(f"enable answered {status}: {text[:300]}")
    invocations = f"model-endpoint/{MODEL}/Production/invocations"
    deadline = time.monotonic() + SCORE_SECONDS
    while time.monotonic() < deadline:
        status, text = call(banner, invocations, ROWS)
        if status == 200:
            predictions = json.loads(text)["predictions"]
            if len(predictions) != len(ROWS["dataframe_split"]["data"]):
                raise SmokeFailure(f"{MODEL} answered {text[:300]}")
            return predictions
        check_not_failed(banner)
        time.sleep(1)
    raise SmokeFailure(f"{MODEL} did not score within {SCORE_SECONDS} s: {status} {text[:300]}")


def check_not_failed(banner: Banner) -> None:
    status, text = call(
        banner, f"api/2.0/preview/mlflow/endpoints-v2/get-status?registered_model_name={MODEL}"
    )
    if status == 200 and json.loads(text)["endpoint_status"]["state"] == "FAILED":
        message = json.loads(text)["endpoint_status"]["state_message"]
        raise SmokeFailure(f"serving {MODEL} failed: {message[:1500]}")


# --- the whole smoke ----------------------------------------------------------------------


def smoke_one(run: Run, password: str | None = None) -> Banner:
    """The run, start to stop; its banner. ``password``: the login's, when it was printed
    by an earlier start in the same clone (a later one prints it no more)."""
    started = time.monotonic()
    say(f"{run.label} (log: {run.log_path})")
    run.start()
    try:
        banner = run.wait_for_banner()
        if banner.password.startswith("(") and password:
            banner.password = password
        log_in(banner)
        predictions = enable_and_score(banner)
        run.remember_processes()
        how = "Ctrl-C" if run.stop_signal == signal.SIGINT else "SIGHUP"
        say(f"  up at {banner.url}, {MODEL} answers {predictions}; {how} …")
        status = run.interrupt()
        check_stopped(run, status)
        say(f"  stopped (make's status {status}), no process left of {len(run.seen)}")
    except BaseException:
        run.kill_everything()
        raise
    say(f"  {time.monotonic() - started:.0f} s in all")
    return banner


def check_stopped(run: Run, status: int) -> None:
    # make passes Ctrl-C on to its job, waits for it, then dies of SIGINT itself.
    if status not in (0, -run.stop_signal):
        raise SmokeFailure(f"{run.label} ended with status {status} after Ctrl-C")
    deadline = time.monotonic() + 30
    while (left := run.left_over()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        raise SmokeFailure(f"{run.label} left processes behind:\n  " + "\n  ".join(left))
    after = run.output().rsplit("Serving UI is ready", 1)[-1]
    # A process that outlived what it needs (Redis stopped before the worker) complains.
    for sign in ("Traceback", "Connection refused"):
        if sign in after:
            raise SmokeFailure(f"{run.label} printed {sign!r} while stopping")


def remove_cluster_database(clone: Path) -> None:
    """As root, run-cluster's PostgreSQL keeps its data outside the clone."""
    if os.geteuid() == 0 and clone.owner() == "root":
        sys.path.insert(0, str(CHECKOUT))
        from endpoints.dev import devdb

        shutil.rmtree(devdb.data_directory(clone / "var").parent, ignore_errors=True)


def smoke_account(account: Account, args: argparse.Namespace) -> None:
    """Both targets in a fresh clone in the account's home (not under /tmp, which a replica
    forked from a zygote sees as a private directory of its own: docs/security.md)."""
    where = Path(tempfile.mkdtemp(prefix=".serving-ui-smoke-", dir=account.home))
    if not account.is_self:
        shutil.chown(where, account.uid, account.gid)
    clone = fresh_clone(account, where)
    try:
        venv = environment_for(account, (CHECKOUT / args.venv).resolve(), where)
        check_imports_clone(account, venv, clone)
        printed = {}
        for target in args.targets.split(","):
            log = where / f"make-{target}.log"
            printed[target] = smoke_one(Run(account, clone, venv, target, log, args.settings))
        if args.hangup and "run" in printed:
            log = where / "make-run-hangup.log"
            run = Run(account, clone, venv, "run", log, args.settings, signal.SIGHUP)
            smoke_one(run, printed["run"].password)
    except SmokeFailure as failure:
        raise SmokeFailure(f"{failure}\n  (clone and logs kept in {where})") from None
    finally:
        if "run-cluster" in args.targets:
            remove_cluster_database(clone)
    if not args.keep:
        shutil.rmtree(where, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=".venv", help="the environment make install built")
    parser.add_argument("--only", choices=["root", "user"], help="one account only")
    parser.add_argument("--targets", default="run,run-cluster")
    parser.add_argument("--keep", action="store_true", help="keep the clones and logs")
    parser.add_argument(
        "--no-hangup", dest="hangup", action="store_false", help="skip the closed terminal"
    )
    parser.add_argument(
        "--setting", action="append", default=[], help="NAME=VALUE for every run's environment"
    )
    args = parser.parse_args()
    args.settings = dict(item.split("=", 1) for item in args.setting)
    me = Account.of(pwd.getpwuid(os.geteuid()).pw_name)
    accounts = [me]
    if os.geteuid() == 0:
        accounts = {"root": [me], "user": [ordinary_user()]}.get(args.only, [me, ordinary_user()])
    # A CI timeout or a kill: stop what the smoke started on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"smoke: signal {signum}"))
    started = time.monotonic()
    try:
        for account in accounts:
            smoke_account(account, args)
    except SmokeFailure as failure:
        say(f"FAILED: {failure}")
        return 1
    say(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
