"""Classification metrics that load offline.

``evaluate.load("accuracy")`` fetches the metric script from the Hugging Face Hub; the same
metrics live here as local ``evaluate`` modules (``accuracy/accuracy.py``, ``f1/f1.py``), and
``evaluate.load(<local directory>)`` never touches the network.

    from hftl.metrics import classification_metrics
    trainer = Trainer(..., compute_metrics=classification_metrics)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METRICS_DIR", "METRIC_NAMES", "metric_path", "load_metric", "classification_metrics"]

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("accuracy", "f1")

# One instance per metric name, shared by every classification_metrics call: loading a module
# copies its script into evaluate's module cache and imports it, too slow to repeat per evaluation.
_CACHE: dict[str, Any] = {}


def metric_path(name: str) -> Path:
    """Directory of the local evaluate module ``name`` (one of METRIC_NAMES)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}: hftl ships {', '.join(METRIC_NAMES)}.")
    return METRICS_DIR / name


def load_metric(name: str, config_name: str | None = None, **kwargs: Any):
    """``evaluate.load`` of the local module ``name``; keyword arguments go to ``evaluate.load``.

    Returns a new ``evaluate.EvaluationModule`` on every call. For the usual single-process use
    (``num_process`` 1) it defaults to ``keep_in_memory=True`` and a unique ``experiment_id``:
    otherwise every rank of a multi-process run would write its predictions to the same
    ``default_experiment-1-0.arrow`` file in evaluate's cache directory and collide.
    """
    # Imported here so that `import hftl.metrics` stays cheap (evaluate pulls in datasets).
    import evaluate

    if kwargs.get("num_process", 1) == 1:
        kwargs.setdefault("keep_in_memory", True)
        kwargs.setdefault("experiment_id", f"hftl-{os.getpid()}-{uuid.uuid4().hex}")
    return evaluate.load(str(metric_path(name)), config_name, **kwargs)


def _cached(name: str):
    if name not in _CACHE:
        _CACHE[name] = load_metric(name)
    return _CACHE[name]


def classification_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for ``transformers.Trainer``: {"accuracy": ..., "f1_macro": ...}.

    ``eval_pred`` is an ``EvalPrediction`` or a ``(predictions, label_ids)`` pair. Predictions are
    logits of shape (N, C), a tuple whose first element is those logits (models that also return
    hidden states or attentions), or class ids of shape (N,) (e.g. after
    ``preprocess_logits_for_metrics`` took the argmax).
    """
    if hasattr(eval_pred, "predictions"):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, labels = eval_pred[0], eval_pred[1]
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    if predictions.ndim > 1:
        predictions = predictions.argmax(axis=-1)
    predictions = predictions.reshape(-1).astype(np.int64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.shape[0]} predictions but {labels.shape[0]} labels.")

    accuracy = _cached("accuracy").compute(predictions=predictions, references=labels)["accuracy"]
    f1_macro = _cached("f1").compute(predictions=predictions, references=labels, average="macro")["f1"]
    return {"accuracy": float(accuracy), "f1_macro": float(f1_macro)}
