"""The training and validation splits of a recipe's data, labels encoded by the task; a seeded `train_val_split`
makes a validation set when there is none. Rows other blocks add to the training split join here."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import ClassLabel, concatenate_datasets

from hftl.data.loading import load_raw
from hftl.errors import HftlError, did_you_mean
from hftl.recipe import DataSection


@dataclass
class Splits:
    train: object  # datasets.Dataset
    validation: object
    label_names: list[str]


def load_splits(data: DataSection, seed: int, task, first_labels: list[str] | None = None) -> Splits:
    """Train/validation splits; the task encodes the labels (`task.encode_labels`). `first_labels`: names that
    take the first ids (continual.new_classes: the previous run's), the data's others after them."""
    raw = load_raw(data, task)
    if data.train_split_name not in raw:
        raise HftlError(
            f"Recipe key 'data.train_split_name': split '{data.train_split_name}' not found; the dataset has: "
            f"{', '.join(raw)}.{did_you_mean(data.train_split_name, raw)}"
        )
    train = raw[data.train_split_name]
    label = data.label_column_name or task.label_column  # None: the task has no labels (language modelling)
    if label is not None and label not in train.column_names:
        raise HftlError(
            f"Recipe key 'data.label_column_name': column '{label}' not in the data; columns are: "
            f"{', '.join(train.column_names)}.{did_you_mean(label, train.column_names)}"
        )
    val_name = data.validation_split_name
    if val_name is not None and val_name not in raw:
        raise HftlError(
            f"Recipe key 'data.validation_split_name': split '{val_name}' not found; the dataset has: {', '.join(raw)}."
        )
    val_name = val_name or next((s for s in ("validation", "test") if s in raw and s != data.train_split_name), None)
    if len(train) == 0:
        source = data.train_dir or data.train_file or data.dataset_name
        raise HftlError(f"The training data '{source}' (split '{data.train_split_name}') has no rows.")
    validation = raw[val_name] if val_name is not None else None
    if first_labels is None:
        train, validation, names = task.encode_labels(train, validation, label)
    else:
        train, validation, names = task.encode_labels(train, validation, label, first=first_labels)
    if validation is None:
        stratify = label if label is not None and isinstance(train.features[label], ClassLabel) and \
            len(train) >= 2 * len(names) / data.train_val_split else None
        try:
            parts = train.train_test_split(test_size=data.train_val_split, seed=seed, stratify_by_column=stratify)
        except ValueError:
            parts = train.train_test_split(test_size=data.train_val_split, seed=seed)
        train, validation = parts["train"], parts["test"]
    if data.max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(data.max_train_samples, len(train))))
    if data.max_eval_samples is not None:
        validation = validation.select(range(min(data.max_eval_samples, len(validation))))
    if label not in (None, "labels"):
        train, validation = train.rename_column(label, "labels"), validation.rename_column(label, "labels")
    return Splits(train, validation, names)


def join_rows(train, rows, key: str):
    """The training split plus `rows` (same columns, cast to the split's features); `key` names where the rows
    came from (the recipe key) when their columns do not fit."""
    missing = [c for c in train.column_names if c not in rows.column_names]
    if missing:
        raise HftlError(f"Recipe key '{key}': its rows lack the training data's column(s) {', '.join(missing)} (they "
                        f"have {', '.join(rows.column_names)}); give data in the recipe's format.")
    return concatenate_datasets([train, rows.select_columns(train.column_names).cast(train.features)])


def holdout(splits: Splits, fraction: float, seed: int) -> Splits:
    """The training split cut in two, seeded and stratified by class where the labels are classes: the larger part
    trains, the slice becomes the validation split (the data's own validation split is left out)."""
    train = splits.train
    stratify = "labels" if "labels" in train.column_names and isinstance(train.features["labels"], ClassLabel) else None
    try:
        parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    except ValueError:  # a class too small to stratify
        parts = train.train_test_split(test_size=fraction, seed=seed)
    return Splits(parts["train"], parts["test"], splits.label_names)
