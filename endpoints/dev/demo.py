"""The demo models ``make run`` registers: really trained, logged with a signature and an
input example (``iris-classifier``, ``ElasticNet``, ``iris-tensor``, ``tensor-echo``: the
README lists them). Seeding is idempotent: a model that has its versions is left alone, a
partly registered one (an interrupted first start) is registered again from scratch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from endpoints import registry

log = logging.getLogger(__name__)

EXPERIMENT = "serving-ui-demo"


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    stages: tuple[str, ...]  # the stage of version 1, 2, …
    log_version: Callable[[int], str]  # version index -> model URI


class TensorEcho:
    """Built lazily so that importing this module does not import MLflow."""

    @staticmethod
    def model():  # -> mlflow.pyfunc.PythonModel
        import mlflow

        class _TensorEcho(mlflow.pyfunc.PythonModel):
            """Answers with the shape of each named input tensor."""

            def predict(self, context, model_input, params=None):
                if isinstance(model_input, dict):
                    return {name: list(np.asarray(t).shape) for name, t in model_input.items()}
                return {"input": list(np.asarray(model_input).shape)}

        return _TensorEcho()


def pinned(*distributions: str) -> list[str]:
    """``name==version`` of each installed distribution: a model's declared requirements.

    Declared, not inferred: MLflow's inference records whatever the logging process has
    imported (torch, pytest, rich, …), and a version served in its own virtualenv would then
    install all of it. MLflow adds its own pin to the list. A local version label (``+cpu``)
    is dropped so that the requirement installs from the package index."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in distributions]


# skops is how MLflow 3 stores a scikit-learn model by default.
SKLEARN_REQUIREMENTS = ("scikit-learn", "skops", "numpy", "pandas")
# A custom pyfunc model is pickled with cloudpickle.
PYFUNC_REQUIREMENTS = ("cloudpickle", "numpy")


def _iris_frame():  # -> tuple[pd.DataFrame, pd.Series]
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    return data.data, data.target


def _log_sklearn(model, X, *, registered_name: str, input_example) -> str:
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(X, model.predict(X))
    with mlflow.start_run(experiment_id=registry.ensure_experiment(EXPERIMENT)):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            registered_model_name=registered_name,
            pip_requirements=pinned(*SKLEARN_REQUIREMENTS),
        )
    return info.model_uri


def log_iris_classifier(version_index: int) -> str:
    from sklearn.linear_model import LogisticRegression

    X, y = _iris_frame()
    # Version 2 is a differently regularised model, so the two versions are told apart.
    model = LogisticRegression(max_iter=1000, C=1.0 if version_index == 1 else 0.05).fit(X, y)
    return _log_sklearn(model, X, registered_name="iris-classifier", input_example=X.head(2))


def log_elasticnet(version_index: int) -> str:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import ElasticNet

    data = load_diabetes(as_frame=True)
    model = ElasticNet(alpha=0.05, l1_ratio=0.5).fit(data.data, data.target)
    return _log_sklearn(
        model, data.data, registered_name="ElasticNet", input_example=data.data.head(2)
    )


def log_iris_tensor(version_index: int) -> str:
    from sklearn.linear_model import LogisticRegression

    X, y = _iris_frame()
    values = X.to_numpy(dtype=np.float64)
    model = LogisticRegression(max_iter=1000).fit(values, y.to_numpy())
    return _log_sklearn(model, values, registered_name="iris-tensor", input_example=values[:2])


def log_tensor_echo(version_index: int) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype("str"), (-1,), "t1"),
                TensorSpec(np.dtype("int64"), (-1, 5), "t2"),
                TensorSpec(np.dtype("int64"), (-1, 3, 2), "t3"),
            ]
        )
    )
    example = {
        "t1": np.array(["a", "b"]),
        "t2": np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]),
        "t3": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]]),
    }
    with mlflow.start_run(experiment_id=registry.ensure_experiment(EXPERIMENT)):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TensorEcho.model(),
            signature=signature,
            input_example=example,
            registered_model_name="tensor-echo",
            pip_requirements=pinned(*PYFUNC_REQUIREMENTS),
        )
    return info.model_uri


DEMO_MODELS = (
    DemoModel(
        "iris-classifier",
        "LogisticRegression on the iris data set (columns named like sklearn's features).",
        ("Production", "Staging"),
        log_iris_classifier,
    ),
    DemoModel(
        "ElasticNet",
        "ElasticNet regression on sklearn's diabetes data.",
        ("Staging",),
        log_elasticnet,
    ),
    DemoModel(
        "iris-tensor",
        "The iris classifier with a tensor signature: accepts inputs / instances lists.",
        ("Production",),
        log_iris_tensor,
    ),
    DemoModel(
        "tensor-echo",
        "A custom pyfunc model with named tensors t1, t2, t3; answers with their shapes.",
        ("Production",),
        log_tensor_echo,
    ),
)


def is_seeded(demo: DemoModel) -> bool:
    try:
        model = registry.get_model(demo.name)
    except registry.ModelNotFound:
        return False
    return len(model.versions) >= len(demo.stages)


def seed(demo: DemoModel) -> None:
    c = registry.client()
    if registry.model_exists(demo.name):
        c.delete_registered_model(demo.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, stage in enumerate(demo.stages, start=1):
            demo.log_version(index)
            registry.transition_stage(demo.name, str(index), stage)
    c.update_registered_model(demo.name, description=demo.description)


def seed_all(echo: Callable[[str], None] = log.info) -> list[str]:
    """Register every demo model that is missing; return the names registered now."""
    registry.configure_mlflow()
    created = []
    for demo in DEMO_MODELS:
        if is_seeded(demo):
            continue
        echo(f"  registering {demo.name} …")
        seed(demo)
        created.append(demo.name)
    return created
