"""Labels of the classification family: one class per example (images, texts, clips) or per word (NER).

Strings, ints or a ClassLabel column become ClassLabel ids; the training split fixes the names, and the
validation split must use the same ones. The config gets num_labels / id2label / label2id from them.
"""

from __future__ import annotations

from hftl.errors import HftlError
from hftl.tasks.base import Task


def label_config(label_names: list[str]) -> dict:
    id2label = dict(enumerate(label_names))
    return {"num_labels": len(label_names), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def encode_labels(ds, column: str, names: list[str] | None):
    """Strings or ints -> ClassLabel ids. `names` given: the validation set must use the same labels."""
    from datasets import ClassLabel

    feature = ds.features[column]
    if isinstance(feature, ClassLabel):
        if names is not None and feature.names != names:
            raise HftlError(f"Recipe key 'data.label_column_name': the validation labels {feature.names} differ from the "
                            f"training labels {names}.")
        if names is None and len(feature.names) < 2:
            raise HftlError(f"Recipe key 'data.label_column_name': column '{column}' has a single class {feature.names}; "
                            "classification needs at least 2 (folders: one sub-folder per class).")
        return ds, feature.names
    values = ds[column]
    if any(v is None for v in values):
        row = list(values).index(None)
        raise HftlError(f"Recipe key 'data.label_column_name': column '{column}' has an empty label at row {row}.")
    if not all(isinstance(v, (str, int, bool)) for v in values):
        bad = next(v for v in values if not isinstance(v, (str, int, bool)))
        raise HftlError(f"Recipe key 'data.label_column_name': column '{column}' must hold strings or integers, found {bad!r}.")
    if names is None:
        uniq = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        names = [str(v) for v in uniq]
        if len(names) < 2:
            raise HftlError(f"Recipe key 'data.label_column_name': column '{column}' has a single class ({names[0]!r}); "
                            "classification needs at least 2.")
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        raise HftlError(f"Recipe key 'data.label_column_name': the validation labels {unknown} do not occur in the "
                        f"training data (labels: {names}).")
    features = ds.features.copy()
    features[column] = ClassLabel(names=names)
    ds = ds.map(lambda b: {column: [index[str(v)] for v in b[column]]}, batched=True, features=features)
    return ds, names


class ClassificationTask(Task):
    """One class per example: ClassLabel ids, a head sized from the labels, accuracy and macro-F1."""

    metric_names = {"accuracy": "Accuracy", "f1_macro": "Macro F1"}

    def encode_labels(self, train, validation, column: str):
        train, names = encode_labels(train, column, None)
        if validation is not None:
            validation, _ = encode_labels(validation, column, names)
        return train, validation, names

    def config_kwargs(self, label_names: list[str]) -> dict:
        return label_config(label_names)

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        from hftl.metrics import classification_metrics

        return classification_metrics(eval_pred)
