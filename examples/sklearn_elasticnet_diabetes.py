"""scikit-learn: train an ElasticNet on the diabetes data, register it, serve it, score it.

    export SERVING_TOKEN=sui_…          # printed by `make run`
    .venv/bin/python examples/sklearn_elasticnet_diabetes.py

The model predicts a quantitative measure of disease progression one year after baseline
from ten (already standardised) features: age, sex, bmi, blood pressure and six blood serum
measurements. The input has named columns, so the endpoint takes ``dataframe_split`` or
``dataframe_records``. ``--help`` lists the options; ``--no-serve`` stops after registering.
"""

from __future__ import annotations

from typing import Any

import serving_client


def load_data():  # -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes(as_frame=True)
    return train_test_split(data.data, data.target, test_size=0.2, random_state=42)


def train(X_train, y_train, X_test, y_test):  # -> tuple[ElasticNet, dict[str, float]]
    from sklearn.linear_model import ElasticNet
    from sklearn.metrics import mean_squared_error, r2_score

    model = ElasticNet(alpha=0.001, l1_ratio=0.5, random_state=42).fit(X_train, y_train)
    predicted = model.predict(X_test)
    metrics = {
        "rmse": float(mean_squared_error(y_test, predicted) ** 0.5),
        "r2": float(r2_score(y_test, predicted)),
    }
    return model, metrics


def log_and_register(model, X_train, metrics: dict[str, float], name: str) -> str:
    """Log the model with its signature, requirements and an input example; register it."""
    import mlflow
    from mlflow.models import infer_signature

    experiment_id = serving_client.configure_mlflow()
    with mlflow.start_run(experiment_id=experiment_id, run_name="elasticnet-diabetes"):
        mlflow.log_params({"alpha": model.alpha, "l1_ratio": model.l1_ratio})
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(X_train, model.predict(X_train)),
            input_example=X_train.head(3),
            pip_requirements=serving_client.pinned("scikit-learn", "pandas", "numpy"),
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def request_body(frame) -> dict[str, Any]:
    """A ``dataframe_split`` request; ``tolist`` keeps every float exact (to_json rounds)."""
    return {
        "dataframe_split": {
            "index": frame.index.tolist(),
            "columns": list(frame.columns),
            "data": frame.to_numpy().tolist(),
        }
    }


def show(predictions: list[float], actual) -> None:
    print("Predicted disease progression (actual value in brackets):")
    for row, (predicted, truth) in enumerate(zip(predictions, actual, strict=True)):
        print(f"  row {row}: {predicted:7.1f}  ({truth:.0f})")


def main(argv: list[str] | None = None) -> None:
    options = serving_client.parse_options(
        "Train, register, serve and score an ElasticNet on sklearn's diabetes data.",
        "diabetes-elasticnet",
        argv,
    )
    X_train, X_test, y_train, y_test = load_data()
    model, metrics = train(X_train, y_train, X_test, y_test)
    print(f"Trained ElasticNet: test RMSE {metrics['rmse']:.1f}, R² {metrics['r2']:.3f}")
    version = log_and_register(model, X_train, metrics, options.model_name)
    sample = X_test.head(5)
    predictions = serving_client.deliver(options, version, request_body(sample))
    show(predictions, y_test.head(5))


if __name__ == "__main__":
    serving_client.main_guard(main)
