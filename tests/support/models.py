"""Tiny registered models for tests on the real stack: each version answers a constant (so a
test can tell versions apart), refuses to load, holds a request until a gate opens, or
attacks its replica's limits.

The classes are defined inside functions so that cloudpickle stores them by value: model
servers load them without importing the test modules. Their input is typed as MLflow passes
a request's rows (a DataFrame, a type it infers no schema from): MLflow validates nothing
more than for users' untyped models, and does not ask for type hints.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd

from endpoints import registry


def constant_model(value: str):
    """A pyfunc model answering ``value`` for every row."""
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: pd.DataFrame, params=None):
            return [value] * len(model_input)

    return Constant()


def unloadable_model():
    """A pyfunc model whose server exits while loading it."""
    import mlflow

    class Unloadable(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            raise RuntimeError("this model refuses to load: its weights are corrupt")

        def predict(self, context, model_input: pd.DataFrame, params=None):
            return []

    return Unloadable()


def gate_model(value: str):
    """Answers ``value``; a request with a ``gate`` column (a ``Gate``'s key) first says in
    its replica's log that it arrived, then waits (at most a minute) until a file of that
    name appears in the model's ``gate`` artifact directory. A sandboxed model reaches no
    network and sees none of the test's files, but its own model directory is the host's,
    read-only: the test writes the file there (``Gate.open``). Register it with
    ``artifacts=gate_artifacts()``."""
    import mlflow

    class GateModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            self.gates = context.artifacts["gate"]

        def predict(self, context, model_input: pd.DataFrame, params=None):
            import os
            import time

            if "gate" in model_input.columns:
                key = str(model_input["gate"][0])
                print(f"gate {key} arrived", flush=True)
                deadline = time.monotonic() + 60
                while not os.path.exists(os.path.join(self.gates, key)):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
            return [value] * len(model_input)

    return GateModel()


def attacker_model():
    """Answers "alive"; a request's columns make it attack its own replica's limits:
    ``allocate_mb`` allocates (and touches) that much memory, ``fork`` forks that many
    processes (each waits for the others, then exits), ``fill_mb`` writes that much into
    /tmp and into /dev/shm. It reports how far each attack got, and why it stopped."""
    import mlflow

    class Attacker(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import json

            columns = model_input.columns
            if "allocate_mb" in columns:
                blocks = [
                    b"\xff" * (64 << 20) for _ in range(int(model_input["allocate_mb"][0]) // 64)
                ]
                return [f"allocated {len(blocks) * 64} MiB"]
            if "fork" in columns:
                return [json.dumps(self.fork(int(model_input["fork"][0])))]
            if "fill_mb" in columns:
                mb = int(model_input["fill_mb"][0])
                report = {where: self.fill(f"{where}/attack", mb) for where in ("/tmp", "/dev/shm")}
                return [json.dumps(report)]
            return ["alive"] * len(model_input)

        @staticmethod
        def fork(count):
            import os

            read, write = os.pipe()
            children, error = [], ""
            try:
                for _ in range(count):
                    pid = os.fork()
                    if pid == 0:
                        os.close(write)
                        os.read(read, 1)  # until the parent closes its end
                        os._exit(0)
                    children.append(pid)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                os.close(write)
                os.close(read)
                for pid in children:
                    os.waitpid(pid, 0)
            return {"forked": len(children), "error": error}

        @staticmethod
        def fill(path, mb):
            import os

            written, error = 0, ""
            try:
                with open(path, "wb", buffering=0) as f:
                    for _ in range(mb):
                        f.write(b"\0" * (1 << 20))
                        written += 1
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                if os.path.exists(path):
                    os.remove(path)
            return {"written_mb": written, "error": error}

    return Attacker()


def gate_artifacts() -> dict[str, str]:
    """The (empty) ``gate`` artifact directory a ``gate_model`` is logged with."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="gate-artifact-")) / "gate"
    directory.mkdir()
    (directory / "README").write_text("Gate files appear here while a test runs.\n")
    return {"gate": str(directory)}


class Gate:
    """The test's side of ``gate_model``: ``key`` goes into a request's ``gate`` column;
    ``arrived`` counts the requests that said so in a replica's log (under ``logs``);
    ``open`` writes the key into every prepared copy of a gate model (under ``models``),
    so held requests and later ones go on."""

    def __init__(self, *, logs: Path, models: Path) -> None:
        self.key = f"gate-{uuid.uuid4().hex}"
        self.logs = logs
        self.models = models
        self._line = f"gate {self.key} arrived".encode()

    @property
    def arrived(self) -> int:
        count = 0
        for log in self.logs.rglob("*.log*"):
            try:
                count += log.read_bytes().count(self._line)
            except OSError:
                continue  # rotated or removed meanwhile
        return count

    def open(self) -> None:
        for directory in self.models.rglob("artifacts/gate"):
            (directory / self.key).touch()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()


def register(
    name: str,
    model,
    stage: str | None = None,
    *,
    artifacts: dict[str, str] | None = None,
    model_config: dict | None = None,
) -> str:
    """Log ``model`` (with ``artifacts`` and ``model_config``) as a new version of ``name``;
    with ``stage``, move it there (archiving the stage's other versions). Returns the
    version number."""
    import mlflow

    registry.configure_mlflow()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("test-models")):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            artifacts=artifacts,
            model_config=model_config,
            registered_model_name=name,
            pip_requirements=["mlflow"],
        )
    version = str(info.registered_model_version)
    if stage:
        registry.transition_stage(name, version, stage, archive_existing_versions=True)
    return version


def copy_of_iris(tag: str, *, versions: int = 1, stage: str | None = "Production") -> str:
    """A registered model of its own holding the demo iris model's files (the demo models
    must be registered), so the demo models stay as other tests expect them: ``versions``
    versions, the first one in ``stage`` (none in a stage if ``stage`` is None)."""
    import warnings

    name = f"{tag}-{uuid.uuid4().hex[:6]}"
    client = registry.client()
    client.create_registered_model(name)
    source = client.get_model_version("iris-classifier", "1")
    for _ in range(versions):
        client.create_model_version(name, source=source.source, run_id=source.run_id or None)
    if stage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, "1", stage)
    return name
