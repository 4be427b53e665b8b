"""hftl.metrics: the local evaluate modules load offline and match scikit-learn."""

import os

# Before evaluate is imported: it reads the offline flag at import time, and a Hub lookup here
# would mean the local modules are not being used.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from transformers import EvalPrediction  # noqa: E402

import hftl.metrics as hm  # noqa: E402

# 4 examples, 3 right: accuracy 0.75.
LOGITS = np.array([[2.0, 0.1, 0.0], [0.1, 3.0, 0.2], [0.0, 0.5, 1.0], [1.5, 0.2, 0.1]])
LABELS = np.array([0, 1, 2, 1])


def test_metric_modules_are_local_evaluate_modules():
    import evaluate

    for name in hm.METRIC_NAMES:
        module_file = hm.metric_path(name) / f"{name}.py"
        assert module_file.is_file()
        metric = hm.load_metric(name)
        assert isinstance(metric, evaluate.Metric)
        assert metric.name == name
        assert "scikit-learn" in metric.citation


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="accuracy"):
        hm.metric_path("bleu")


def test_accuracy_known_values():
    accuracy = hm.load_metric("accuracy")
    assert accuracy.compute(references=[0, 1, 1, 1], predictions=[0, 1, 0, 1]) == {"accuracy": 0.75}
    assert accuracy.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0]) == {"accuracy": 0.5}
    assert accuracy.compute(references=[0, 1, 1, 1], predictions=[0, 1, 0, 1], normalize=False) == {"accuracy": 3.0}


def test_f1_matches_sklearn_for_every_average():
    f1 = hm.load_metric("f1")
    references = [0, 1, 2, 0, 1, 2, 2]
    predictions = [0, 2, 1, 0, 0, 1, 2]
    for average in ("macro", "micro", "weighted"):
        result = f1.compute(references=references, predictions=predictions, average=average)
        assert isinstance(result["f1"], float)
        assert result["f1"] == pytest.approx(f1_score(references, predictions, average=average))
    per_label = f1.compute(references=references, predictions=predictions, average=None)["f1"]
    np.testing.assert_allclose(per_label, f1_score(references, predictions, average=None))
    # The Hub metric's default is binary F1 of label 1.
    assert f1.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0]) == {"f1": 0.5}
    assert f1.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0], pos_label=0)["f1"] == pytest.approx(2 / 3)


def test_multilabel_config():
    f1 = hm.load_metric("f1", "multilabel")
    result = f1.compute(predictions=[[0, 1, 1], [1, 1, 0]], references=[[0, 1, 1], [0, 1, 0]], average="macro")
    assert result["f1"] == pytest.approx(2 / 3)


def test_classification_metrics_on_logits():
    result = hm.classification_metrics(EvalPrediction(predictions=LOGITS, label_ids=LABELS))
    predicted = LOGITS.argmax(-1)
    assert set(result) == {"accuracy", "f1_macro"}
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["accuracy"] == pytest.approx(accuracy_score(LABELS, predicted))
    assert result["f1_macro"] == pytest.approx(f1_score(LABELS, predicted, average="macro"))
    assert all(type(v) is float for v in result.values())


def test_classification_metrics_input_forms():
    expected = hm.classification_metrics(EvalPrediction(predictions=LOGITS, label_ids=LABELS))
    hidden = np.zeros((4, 5, 8))
    # Models returning (logits, hidden_states, ...): the logits come first.
    assert hm.classification_metrics(EvalPrediction(predictions=(LOGITS, hidden), label_ids=LABELS)) == expected
    # A plain (predictions, labels) pair, as some callers pass it.
    assert hm.classification_metrics((LOGITS, LABELS)) == expected
    # Class ids already (preprocess_logits_for_metrics took the argmax).
    assert hm.classification_metrics((LOGITS.argmax(-1), LABELS)) == expected
    # float32 logits and labels as a list.
    assert hm.classification_metrics((LOGITS.astype(np.float32), LABELS.tolist())) == expected


def test_classification_metrics_rejects_length_mismatch():
    with pytest.raises(ValueError, match="labels"):
        hm.classification_metrics((LOGITS, LABELS[:3]))


def test_classification_metrics_loads_modules_once():
    hm.classification_metrics((LOGITS, LABELS))
    cached = dict(hm._CACHE)
    assert set(cached) == {"accuracy", "f1"}
    # Repeated evaluations reuse the same instances and keep giving the same answer.
    first = hm.classification_metrics((LOGITS, LABELS))
    second = hm.classification_metrics((LOGITS, LABELS))
    assert first == second
    assert all(hm._CACHE[name] is cached[name] for name in cached)


def test_load_metric_defaults_avoid_cache_file_collisions():
    a, b = hm.load_metric("accuracy"), hm.load_metric("accuracy")
    assert a.keep_in_memory and b.keep_in_memory
    assert a.experiment_id != b.experiment_id
    # Explicit arguments win over the defaults.
    c = hm.load_metric("accuracy", experiment_id="mine", keep_in_memory=False)
    assert c.experiment_id == "mine" and not c.keep_in_memory
