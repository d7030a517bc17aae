"""Preparing a model version to be served: its model files and the Python that runs it.

By default (``SERVING["ENVIRONMENT"] == "local"``) replicas run in the product's own Python
environment, which already has MLflow, the scoring server and the demo models' libraries.
With ``"virtualenv"`` each model gets an environment built from the requirements it was
logged with, shared by every model with the same requirements (cached by their hash) and
layered over the product's packages (a ``.pth`` file puts them behind the environment's
own), so only what differs is installed. Everything this does is written to the
version's build log (the Build Logs tab).
"""

from __future__ import annotations

import hashlib
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from endpoints import registry

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
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def model_dir(name: str, version: str) -> Path:
    return data_dir() / "models" / _safe(name) / _safe(version)


def build_log_path(name: str, version: str) -> Path:
    return data_dir() / "build-logs" / _safe(name) / f"{_safe(version)}.log"


def replica_log_path(name: str, version: str, replica_id: str) -> Path:
    return data_dir() / "logs" / _safe(name) / _safe(version) / f"{replica_id}.log"


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
    target = model_dir(name, version)
    if is_prepared(str(target)):
        log.write(f"Model files for {name} v{version} are already at {target}.")
    else:
        log.write(f"Downloading model {name} v{version} from the registry…")
        try:
            registry.download_model(name, version, target)
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
    env_dir = data_dir() / "envs" / requirements_hash(requirements)
    python = env_dir / "bin" / "python"
    if (env_dir / _ENV_DONE).exists():
        log.write(f"Reusing the environment {env_dir} (same requirements).")
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    log.write(f"Building an environment in {env_dir}…")
    _run([sys.executable, "-m", "venv", str(env_dir)], log)
    _layer_over_product(python)
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
        log,
    )
    (env_dir / _ENV_DONE).write_text(requirements.read_text())
    log.write("Environment ready.")
    return python


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


def _run(cmd: list[str], log: BuildLog) -> None:
    log.write("$ " + " ".join(cmd))
    with open(log.path, "a", encoding="utf-8") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        log.write(f"Failed with exit code {result.returncode}.")
        raise BuildError(
            f"Building the model's environment failed (exit code {result.returncode}); "
            "see the build logs."
        )
