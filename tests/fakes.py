"""Tiny registered models for tests on the real stack: each version answers a constant (so a
test can tell versions apart), refuses to load, or holds a request until a gate file exists.

The classes are defined inside functions so that cloudpickle stores them by value: model
servers load them without importing the test modules.
"""

from __future__ import annotations

from endpoints import registry


def constant_model(value: str):
    """A pyfunc model answering ``value`` for every row."""
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [value] * len(model_input)

    return Constant()


def unloadable_model():
    """A pyfunc model whose server exits while loading it."""
    import mlflow

    class Unloadable(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            raise RuntimeError("this model refuses to load: its weights are corrupt")

        def predict(self, context, model_input, params=None):
            return []

    return Unloadable()


def gate_model(value: str):
    """Answers ``value``; a request with ``gate``/``arrived`` columns first notes its
    arrival in the ``arrived`` directory and waits (at most a minute) for the ``gate`` file."""
    import mlflow

    class Gate(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import os
            import time
            import uuid

            if "gate" in model_input.columns:
                gate, arrived = str(model_input["gate"][0]), str(model_input["arrived"][0])
                open(os.path.join(arrived, uuid.uuid4().hex), "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.02)
            return [value] * len(model_input)

    return Gate()


def register(name: str, model, stage: str | None = None) -> str:
    """Log ``model`` as a new version of ``name``; with ``stage``, move it there (archiving
    the stage's other versions). Returns the version number."""
    import mlflow

    registry.configure_mlflow()
    with mlflow.start_run(experiment_id=registry.ensure_experiment("test-models")):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            registered_model_name=name,
            pip_requirements=["mlflow"],
        )
    version = str(info.registered_model_version)
    if stage:
        registry.transition_stage(name, version, stage, archive_existing_versions=True)
    return version
