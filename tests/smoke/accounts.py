"""The accounts `make smoke` runs the product as, their fresh clones, and the Python
environment each can run (the one `make install` built, or one of its own with the same
packages when the built one's interpreter is out of its reach)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent.parent
SMOKE_USER = "serving-smoke"
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SmokeFailure(Exception):
    pass


def say(text: str) -> None:
    print(f"smoke: {text}", flush=True)


# --- accounts and their checkouts -----------------------------------------------------------


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def of(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    def popen_args(self) -> dict:
        """Run as this account: no intermediate process (runuser, su) to swallow signals."""
        if self.is_self:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, **extra: str) -> dict[str, str]:
        """A login shell's environment, not this process's (no MAKEFLAGS, no test settings)."""
        path = os.environ.get("PATH", USER_PATH) if self.is_self else USER_PATH
        base = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}
        return {**base, "PATH": path, "LANG": "C.UTF-8", **extra}

    def run(self, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=self.env(), capture_output=True, text=True, **self.popen_args(), **kwargs
        )


def ordinary_user() -> Account:
    """The smoke's own unprivileged account (created once, as root)."""
    try:
        return Account.of(SMOKE_USER)
    except KeyError:
        useradd = shutil.which("useradd", path=USER_PATH) or "useradd"
        subprocess.run([useradd, "--create-home", "--shell", "/bin/bash", SMOKE_USER], check=True)
        return Account.of(SMOKE_USER)


def fresh_clone(account: Account, where: Path) -> Path:
    """A clone of this checkout's HEAD, owned by ``account``."""
    commit = git("rev-parse", "HEAD")
    clone = where / "serving-ui"
    subprocess.run(["git", "clone", "--quiet", str(CHECKOUT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", commit], check=True)
    if not account.is_self:
        subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(clone)], check=True)
    return clone


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(CHECKOUT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


# --- the Python environment each account runs with -----------------------------------------


def runs_python(account: Account, venv: Path) -> bool:
    check = 'import importlib.metadata as m; m.version("serving-ui")'
    try:
        result = account.run([str(venv / "bin" / "python"), "-c", check])
    except PermissionError:  # not even its interpreter
        return False
    return result.returncode == 0


def environment_for(account: Account, built: Path, where: Path) -> Path:
    """``built`` when ``account`` can run it, else an environment of its own with the
    built one's packages."""
    if runs_python(account, built):
        return built
    version = ".".join(built_version(built).split(".")[:2])
    python = shutil.which(f"python{version}", path=USER_PATH)
    if python is None:
        raise SmokeFailure(f"{account.name} cannot run {built}, and there is no python{version}")
    venv = where / "venv"
    made = account.run([python, "-m", "venv", "--without-pip", str(venv)])
    if made.returncode:
        raise SmokeFailure(f"python{version} -m venv failed: {made.stderr}")
    site = f"lib/python{version}/site-packages"
    shutil.rmtree(venv / site)
    # Hard links: seconds for gigabytes, and the files are the built environment's own.
    linked = subprocess.run(["cp", "-al", str(built / site), str(venv / site)], check=False)
    if linked.returncode:
        subprocess.run(["cp", "-a", str(built / site), str(venv / site)], check=True)
    complete_for_interpreter(venv)
    if not runs_python(account, venv):
        raise SmokeFailure(f"{account.name} cannot import the product with {venv}")
    say(f"{account.name} cannot run {built}'s interpreter; it runs {python} with its packages")
    return venv


def complete_for_interpreter(venv: Path) -> None:
    """Install what the packages need on this interpreter but did not on the one they were
    installed for (redis needs async-timeout below Python 3.11.3), as `make install` would."""
    python = str(venv / "bin" / "python")
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    missing = sorted(set(re.findall(r"requires (\S+), which is not installed", check.stdout)))
    if missing:
        say(f"installing {', '.join(missing)} for {venv}'s interpreter")
        quiet = ["--quiet", "--disable-pip-version-check"]
        result = subprocess.run(
            [python, "-m", "pip", "install", *quiet, *missing], capture_output=True, text=True
        )
        if result.returncode:
            raise SmokeFailure(f"pip install {' '.join(missing)} failed: {result.stderr[-2000:]}")


def built_version(venv: Path) -> str:
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            return value.strip()
    raise SmokeFailure(f"{venv}/pyvenv.cfg names no Python version")


def check_imports_clone(account: Account, venv: Path, clone: Path) -> None:
    """The product's processes start in the clone (`python manage.py`, `python -m …`), so
    they import the clone's code, whatever the environment's editable install points at."""
    code = "import endpoints, serving_ui; print(endpoints.__file__, serving_ui.__file__)"
    result = account.run([str(venv / "bin" / "python"), "-c", code], cwd=clone)
    paths = result.stdout.split()
    if result.returncode or not all(p.startswith(f"{clone}/") for p in paths):
        raise SmokeFailure(f"{clone} imports {paths or result.stderr} instead of its own code")
