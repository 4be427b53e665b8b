"""Labels of the classification family: one class per example (images, texts, clips) or per word (NER).

Strings, ints or a ClassLabel column become ClassLabel ids; the training split fixes the names, and the
validation split must use the same ones. The config gets num_labels / id2label / label2id from them.
"""

from __future__ import annotations

from hftl.errors import HftlError
from hftl.metrics import classification_metrics
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


def _as_names(ds, column: str):
    """A ClassLabel column as its label names (strings), so that it can be encoded against other names."""
    from datasets import ClassLabel, Value

    feature = ds.features[column]
    if not isinstance(feature, ClassLabel):
        return ds
    features = ds.features.copy()
    features[column] = Value("string")
    return ds.map(lambda b: {column: [feature.names[i] for i in b[column]]}, batched=True, features=features)


class ClassificationTask(Task):
    """One class per example: ClassLabel ids, a head sized from the labels, accuracy and macro-F1."""

    metric_names = {"accuracy": "Accuracy", "f1_macro": "Macro F1"}
    label_column = "label"

    def encode_labels(self, train, validation, column: str, first: list[str] | None = None):
        """`first`: label names that take the first ids whether the data has them or not (continual.new_classes:
        the previous run's); the data's other labels follow, sorted."""
        if first is None:
            train, names = encode_labels(train, column, None)
            if validation is not None:
                validation, _ = encode_labels(validation, column, names)
            return train, validation, names
        parts = [_as_names(ds, column) for ds in (train, validation) if ds is not None]
        seen = {str(v) for ds in parts for v in ds[column] if v is not None}
        names = list(first) + sorted(seen - set(first))
        encoded = [encode_labels(ds, column, names)[0] for ds in parts]
        return encoded[0], (encoded[1] if validation is not None else None), names

    def config_kwargs(self, label_names: list[str]) -> dict:
        return label_config(label_names)

    def metrics_for(self, label_names: list[str], processor=None):
        return classification_metrics
