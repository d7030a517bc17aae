"""Preparing a model version to be served: its model files and the Python that runs it. By
default replicas run in the product's own environment; with ``SERVING_ENVIRONMENT=
virtualenv`` each set of requirements gets an environment of its own, cached by their hash,
layered over the product's packages and built by ``pip`` in the sandbox. A model's files
are keyed by its exact name, version and identity in the registry. Every step goes to the
version's build log (docs/provisioning.md, "Model environments"; docs/security.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from endpoints import registry
from endpoints.runtime import sandbox

# A ready environment has this file; a half-built one (crash mid-install) is rebuilt.
_ENV_DONE = ".serving-env-complete"


class BuildError(Exception):
    """The version's model or environment could not be prepared; the message says why."""


@dataclass(frozen=True)
class Prepared:
    model_path: str
    python: str
    build_log_path: str


def data_dir() -> Path:
    return Path(settings.SERVING["DATA_DIR"])


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def name_key(name: str) -> str:
    """One directory name per exact model name: readable, and never shared by two names."""
    return f"{_safe(name)}-{_digest(name)}"


def identity(info: registry.ModelVersionInfo) -> str:
    """What makes a version's files these files: a version number comes back after the
    model is deleted and registered again, its source, run and creation time do not."""
    return "\n".join((info.source, info.run_id, str(info.creation_timestamp)))


def models_root() -> Path:
    return data_dir() / "models"


def model_dir(name: str, version: str, version_identity: str) -> Path:
    return models_root() / name_key(name) / f"{_safe(version)}-{_digest(version_identity)}"


def build_log_path(name: str, version: str) -> Path:
    return data_dir() / "build-logs" / name_key(name) / f"{_safe(version)}.log"


def replica_log_path(name: str, version: str, replica_id: str) -> Path:
    return data_dir() / "logs" / name_key(name) / _safe(version) / f"{replica_id}.log"


def zygote_dir() -> Path:
    """Sockets and logs of the pre-warmed interpreters that fork replicas."""
    return data_dir() / "zygotes"


def is_prepared(path: str) -> bool:
    return bool(path) and (Path(path) / "MLmodel").exists()


class BuildLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line.rstrip()}\n")


def prepare(name: str, version: str) -> Prepared:
    """Download the version's model (unless already here) and choose its interpreter."""
    log = BuildLog(build_log_path(name, version))
    try:
        target = model_dir(name, version, identity(registry.get_version(name, version)))
    except Exception as exc:  # any registry failure ends the build
        log.write(f"Download failed: {exc}")
        raise BuildError(f"Could not download model {name} v{version}: {exc}") from exc
    if is_prepared(str(target)):
        log.write(f"Model files for {name} v{version} are already at {target}.")
    else:
        log.write(f"Downloading model {name} v{version} from the registry…")
        try:
            registry.download_model(name, version, target)
            sandbox.make_readable(target)
        except Exception as exc:  # any registry or storage failure ends the build
            log.write(f"Download failed: {exc}")
            raise BuildError(f"Could not download model {name} v{version}: {exc}") from exc
        if not is_prepared(str(target)):
            log.write("The downloaded artifact has no MLmodel file.")
            raise BuildError(
                f"Model {name} v{version} is not an MLflow model (no MLmodel file in it)."
            )
        log.write(f"Model downloaded to {target}.")
    python = _interpreter(target, log)
    log.write(f"Replicas will run with {python}.")
    return Prepared(model_path=str(target), python=python, build_log_path=str(log.path))


def _interpreter(model_path: Path, log: BuildLog) -> str:
    if settings.SERVING["ENVIRONMENT"] != "virtualenv":
        log.write("Using the product's own Python environment.")
        return sys.executable
    requirements = model_path / "requirements.txt"
    if not requirements.exists():
        log.write("The model declares no requirements: using the product's environment.")
        return sys.executable
    return str(_virtualenv(requirements, log))


def requirements_hash(requirements: Path) -> str:
    lines = sorted(
        line.strip()
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _virtualenv(requirements: Path, log: BuildLog) -> Path:
    """The environment of ``requirements``: reused when complete, else built by one process
    at a time (a lock per requirements hash) in a temporary directory renamed into place
    once complete. A complete environment is never removed: others may run from it."""
    envs = data_dir() / "envs"
    envs.mkdir(parents=True, exist_ok=True)
    key = requirements_hash(requirements)
    env_dir = envs / key
    python = env_dir / "bin" / "python"
    with open(envs / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env_dir / _ENV_DONE).exists():
            log.write(f"Reusing the environment {env_dir} (same requirements).")
            return python
        # Under the lock, anything here without the marker is a build that died (an
        # environment built before builds were renamed into place, or a crash).
        shutil.rmtree(env_dir, ignore_errors=True)
        for stale in envs.glob(f".build-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = envs / f".build-{key}-{secrets.token_hex(4)}"
        log.write(f"Building an environment for {env_dir}…")
        try:
            _build(building, requirements, log)
            (building / _ENV_DONE).write_text(requirements.read_text())
            os.rename(building, env_dir)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    log.write("Environment ready.")
    return python


def _build(env_dir: Path, requirements: Path, log: BuildLog) -> None:
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "venv", str(env_dir)], log)
    _layer_over_product(python)
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "-r",
        str(requirements),
    ]
    sandboxed = settings.SERVING["SANDBOX"] == "bwrap"
    uid = sandbox.sandbox_uid() if sandboxed else None
    pip_env, pip_paths = sandbox.pip_configuration()
    if sandboxed:
        if uid is not None:
            _chown_tree(env_dir, uid, uid)
        pip = sandbox.build_command(
            pip,
            python=str(python),
            writable=[str(env_dir)],
            read_only=[str(requirements), *pip_paths],
        )
    env = {**build_environment(), **pip_env}
    try:
        _run(pip, log, env=env, timeout=settings.SERVING["BUILD_TIMEOUT_SECONDS"])
    finally:
        if uid is not None:
            _chown_tree(env_dir, 0, 0)  # the replicas' user can read it, never change it


# What ``pip install`` is given of this process's environment besides pip's configuration.
_BUILD_ENV = ("PATH", "LANG", "LC_ALL")


def build_environment() -> dict[str, str]:
    env = {k: os.environ[k] for k in _BUILD_ENV if k in os.environ}
    return {**env, **sandbox.PRIVATE_ENV, "PIP_NO_CACHE_DIR": "1"}


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, gid)
    os.lchown(path, uid, gid)


def _layer_over_product(python: Path) -> None:
    """Make the product's packages visible behind the environment's own (a ``.pth`` file):
    requirements the product already satisfies are not installed again, and whatever the
    model pins differently is installed into the environment, where it wins."""
    own = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    product = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(own) / "_serving_product.pth").write_text("\n".join(product) + "\n")


def _run(
    cmd: list[str],
    log: BuildLog,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    shown = cmd[cmd.index("--") + 1 :] if "--" in cmd else cmd
    while "--" in shown:  # the sandbox's own prefix is not what the user wants to read
        shown = shown[shown.index("--") + 1 :]
    log.write("$ " + " ".join(shown))
    with open(log.path, "a", encoding="utf-8") as out:
        try:
            result = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, check=False, env=env, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            log.write(f"Stopped after {timeout:.0f} seconds (SERVING_BUILD_TIMEOUT_SECONDS).")
            raise BuildError(
                f"Building the model's environment took longer than {timeout:.0f} seconds."
            ) from exc
    if result.returncode != 0:
        log.write(f"Failed with exit code {result.returncode}.")
        raise BuildError(
            f"Building the model's environment failed (exit code {result.returncode}); "
            "see the build logs."
        )
