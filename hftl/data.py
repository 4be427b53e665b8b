"""Load the recipe's data into train/validation `datasets.Dataset`s, labels encoded by the task.

Sources (as in the transformers example scripts): folders (the task's layout: images, audio clips), csv/json/jsonl/parquet files,
`datasets.save_to_disk` folders, Hub dataset ids, and `zoo:` aliases. A seeded `train_val_split`
makes a validation set when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hftl import zoo
from hftl.errors import HftlError, did_you_mean
from hftl.recipe import DataSection

_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class Splits:
    train: object  # datasets.Dataset
    validation: object
    label_names: list[str]


def _file_loader(path: str, key: str, task) -> str:
    p = Path(path)
    if p.is_dir():
        raise HftlError(f"Recipe key 'data.{key}': '{path}' is a folder, not a file (for image folders use data.train_dir).")
    if not p.is_file():
        raise HftlError(f"Recipe key 'data.{key}': file '{path}' does not exist.")
    if p.stat().st_size == 0:
        raise HftlError(f"Recipe key 'data.{key}': file '{path}' is empty.")
    allowed = [s for s in _FILE_LOADERS if s != ".txt" or task.reads_plain_text]
    loader = _FILE_LOADERS.get(p.suffix.lower()) if p.suffix.lower() in allowed else None
    if loader is None:
        raise HftlError(f"Recipe key 'data.{key}': '{path}' has extension '{p.suffix}'; allowed for {task.name}: "
                        f"{', '.join(allowed)}.")
    if loader == "csv":
        with open(p, "rb") as f:
            head = f.read(1 << 16)
        if len(head) < 1 << 16 and len([line for line in head.splitlines() if line.strip()]) < 2:
            raise HftlError(f"Recipe key 'data.{key}': file '{path}' has a header but no rows.")
    return loader


def _check_dir(path: str, key: str, layout: str) -> None:
    p = Path(path)
    if not p.is_dir():
        raise HftlError(f"Recipe key 'data.{key}': folder '{path}' does not exist (expected {layout} files).")
    if not any(p.iterdir()):
        raise HftlError(f"Recipe key 'data.{key}': folder '{path}' is empty (expected {layout} files).")


def _load_raw(data: DataSection, task):
    import datasets

    try:
        if data.train_dir:
            _check_dir(data.train_dir, "train_dir", task.folder_layout)
            folders = {"train": data.train_dir}
            if data.validation_dir:
                _check_dir(data.validation_dir, "validation_dir", task.folder_layout)
                folders["validation"] = data.validation_dir
            return task.load_folder(folders)
        if data.train_file:
            loader = _file_loader(data.train_file, "train_file", task)
            files = {"train": data.train_file}
            if data.validation_file:
                if _file_loader(data.validation_file, "validation_file", task) != loader:
                    raise HftlError("Recipe keys 'data.train_file' and 'data.validation_file' must have the same format.")
                files["validation"] = data.validation_file
            # text: one row per line, paragraph or file (data.sample_by), in a `text` column
            options = {"sample_by": data.sample_by} if loader == "text" else {}
            return datasets.load_dataset(loader, data_files=files, **options)
        name = data.dataset_name
        if name.startswith(zoo.PREFIX):
            return zoo.load_dataset(name, data.dataset_config_name)
        if Path(name).is_dir() and any((Path(name) / f).exists() for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(name)
            return ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict(train=ds)
        return datasets.load_dataset(name, data.dataset_config_name)
    except HftlError:
        raise
    except Exception as e:  # datasets raises many types (DatasetNotFoundError, ArrowInvalid, ValueError ...)
        source = data.train_dir or data.train_file or data.dataset_name
        key = "train_dir" if data.train_dir else "train_file" if data.train_file else "dataset_name"
        if type(e).__name__ == "DatasetGenerationError" and e.__cause__ is not None:
            e = e.__cause__  # "An error occurred while generating the dataset": the cause says what
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "corresponds to no data" in msg:  # datasets' words for "no file the loader can read"
            msg = f"no data found ({f'no {task.folder_files} files in {task.folder_layout} folders' if data.train_dir else 'no rows'})"
        raise HftlError(f"Recipe key 'data.{key}': could not load '{source}': {msg}") from None


def load_splits(data: DataSection, seed: int, task, first_labels: list[str] | None = None) -> Splits:
    """Train/validation splits; the task encodes the labels (`task.encode_labels`). `first_labels`: names that
    take the first ids (continual.new_classes: the previous run's), the data's others after them."""
    raw = _load_raw(data, task)
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
    from datasets import ClassLabel

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


def map_fingerprint(ds, tokenizer, *settings) -> str | None:
    """The fingerprint of `ds.map(<tokenize with these settings>)`, from the fast tokenizer's serialized state.

    Without it `datasets` fingerprints the map function by pickling its closure, tokenizer included: ~0.5 s
    a split, most of a cached feature-extraction run's setup. None (datasets' own way) for slow tokenizers."""
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(ds, "_fingerprint", None) is None:
        return None
    described = json.dumps([type(tokenizer).__name__, tokenizer.init_kwargs, tokenizer.padding_side,
                            tokenizer.truncation_side, [str(t) for t in tokenizer.all_special_tokens], settings],
                           sort_keys=True, default=str)
    state = json.loads(backend.to_str())
    for k in ("truncation", "padding"):  # what the last call left; every call sets its own
        state.pop(k, None)
    h = hashlib.sha256(b"hftl-tokenize-1")
    for part in (ds._fingerprint, json.dumps(state), described):
        h.update(part.encode())
    return h.hexdigest()[:32]
