"""The recipe's data sources as loaded, before labels are encoded: folders (the task's layout: images, audio
clips), csv/json/jsonl/parquet files, `datasets.save_to_disk` folders, Hub dataset ids and `zoo:` aliases, as in
the transformers example scripts."""

from __future__ import annotations

from pathlib import Path

from hftl import zoo
from hftl.errors import HftlError
from hftl.recipe import DataSection

_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


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


def load_raw(data: DataSection, task):
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
