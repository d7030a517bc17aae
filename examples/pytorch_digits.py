"""PyTorch: train a small network on handwritten digits, register it, serve it, score it.

    export SERVING_TOKEN=sui_…          # printed by `make run`
    .venv/bin/python examples/pytorch_digits.py

The network reads an 8x8 image of a handwritten digit (sklearn's digits data, 64 pixel
intensities scaled to 0-1) and answers the probability of each digit 0-9. It is logged
with MLflow's PyTorch flavor and a tensor signature (float32, shape (-1, 64)), so the
endpoint takes ``{"inputs": [[64 numbers], …]}`` (or row ``instances``). Training takes a
few seconds on a CPU. ``--help`` lists the options; ``--no-serve`` stops after registering.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import serving_client

EPOCHS = 30
BATCH_SIZE = 64


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def build_network():  # -> torch.nn.Sequential
    """Built from torch's own layers, so the pickled model loads in any process with torch
    installed (a class defined in this script would have to be importable there)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
        nn.Softmax(dim=1),
    )


def train(X_train: np.ndarray, y_train: np.ndarray):  # -> torch.nn.Sequential
    import torch

    torch.manual_seed(0)
    network = build_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    loss_fn = torch.nn.NLLLoss()
    inputs, labels = torch.from_numpy(X_train), torch.from_numpy(y_train)
    network.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            # The network ends in softmax (what the endpoint should answer); NLL wants logs.
            loss = loss_fn(torch.log(network(inputs[batch]) + 1e-9), labels[batch])
            loss.backward()
            optimizer.step()
    network.eval()
    return network


def predict(network, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return network(torch.from_numpy(X)).numpy()


def log_and_register(network, X_train: np.ndarray, accuracy: float, name: str) -> str:
    """Log the model with its signature, requirements and an input example; register it."""
    import mlflow
    from mlflow.models import infer_signature

    experiment_id = serving_client.configure_mlflow()
    with mlflow.start_run(experiment_id=experiment_id, run_name="pytorch-digits"):
        mlflow.log_params({"epochs": EPOCHS, "batch_size": BATCH_SIZE, "hidden_units": 32})
        mlflow.log_metric("test_accuracy", accuracy)
        info = mlflow.pytorch.log_model(
            network,
            name="model",
            signature=infer_signature(X_train[:10], predict(network, X_train[:10])),
            input_example=X_train[:3],
            pip_requirements=serving_client.pinned("torch", "numpy"),
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def request_body(images: np.ndarray) -> dict[str, Any]:
    """A tensor request, columnar format with one unnamed input: ``{"inputs": [[…], …]}``."""
    return {"inputs": images.tolist()}


def show(predictions: list[list[float]], actual: np.ndarray) -> None:
    print("Predicted digit, its probability, and the actual digit:")
    for row, (probabilities, truth) in enumerate(zip(predictions, actual, strict=True)):
        digit = int(np.argmax(probabilities))
        print(f"  image {row}: {digit}  (p={probabilities[digit]:.3f}, actual {truth})")


def main(argv: list[str] | None = None) -> None:
    options = serving_client.parse_options(
        "Train, register, serve and score a PyTorch network on sklearn's digits data.",
        "digits-pytorch",
        argv,
    )
    X_train, X_test, y_train, y_test = load_data()
    network = train(X_train, y_train)
    accuracy = float((predict(network, X_test).argmax(axis=1) == y_test).mean())
    print(f"Trained a 64-32-10 network for {EPOCHS} epochs: test accuracy {accuracy:.3f}")
    version = log_and_register(network, X_train, accuracy, options.model_name)
    predictions = serving_client.deliver(options, version, request_body(X_test[:5]))
    show(predictions, y_test[:5])


if __name__ == "__main__":
    serving_client.main_guard(main)
